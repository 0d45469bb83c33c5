"""The demo model's recipe, in full and on a reduced budget.

`make demo-model` runs the full recipe (models/demo). The reduced one trains the same way on a
small split in about two minutes; `models/demo/recipe_check.json` records what it reached when the
bundle was made, and the test suite re-runs it to prove the recipe still trains as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .datasets import read_dataset
from .evaluate import evaluate
from .features import extract
from .model.backbone import Backbone
from .model.bundle import load_bundle
from .model.defaults import TINY_MODEL
from .synth import generate
from .train import TrainConfig, run_training

REDUCED_DATA = {"seed": 1, "train": 1500, "val": 300, "test": 300}
REDUCED = TrainConfig(seed=0, clip_steps=200, steps=150, val_every=75, calibrate_candidates=50)


def run_reduced(work: Path, committed: Path | None = None) -> dict[str, Any]:
    """Train the reduced recipe from scratch; evaluate it (and the committed bundle) on its test split."""
    data = work / "synth"
    if not (data / "dataset.json").is_file():
        generate(data, **REDUCED_DATA)
    ds = data / "dataset.json"
    train, val, test = (read_dataset(ds, "karpathy", s) for s in ("train", "val", "test"))
    backbone = Backbone.load(TINY_MODEL, from_scratch=True, seed=0, device="cpu")
    run_training(backbone, train, val, data / "images", work / "bundle", REDUCED, from_scratch=True,
                 progress=False, log=lambda *_: None)
    out: dict[str, Any] = {}
    for name, path in (("reduced", work / "bundle"), ("committed", committed)):
        if path is None:
            continue
        b = load_bundle(path, device="cpu")
        res = evaluate(b.matcher, extract(b.backbone, test, data / "images"), candidates=50,
                       rankers=("global", "two_stage"))
        out[name] = {k: v["rsum"] for k, v in res.items()}
    return out


def record(bundle: Path, work: Path) -> dict[str, Any]:
    result = run_reduced(work, bundle)
    (bundle / "recipe_check.json").write_text(json.dumps({"data": REDUCED_DATA, **result}, indent=2))
    return result


if __name__ == "__main__":  # python -m training.recipe record [BUNDLE]
    import sys
    import tempfile

    if len(sys.argv) < 2 or sys.argv[1] != "record":
        raise SystemExit("usage: python -m training.recipe record [models/demo]")
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parents[1] / "models" / "demo"
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(record(target, Path(tmp)), indent=2))
