"""How right the matcher's training labels are: mined candidates against what the synthetic scenes say is true.

    python bench/mining_labels.py --model models/demo --data data/synth --split train --cache data/cache

Mines each caption's (and each image's) global top-k the way `finesearch train` does, and counts, per
label the trainer gives (positive, left out as implied, negative), how many of those pairs are true of the
image according to the scene (bench/synth_truth.py, which the product never sees). A negative that is
true is a wrong label: the matcher is taught a distinction that is not there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_truth import checks_for

from training.datasets import read_dataset
from training.features import cached_extract, extract
from training.mining import Candidates, Truth, mine
from training.model.bundle import load_bundle


def _counts(c: Candidates, true: torch.Tensor) -> dict[str, dict[str, float]]:
    out = {}
    # "negative_all": what the trainer calls negative with --skip-implied false (implied pairs included)
    for name, label in (("positive", c.positive), ("implied", c.unsure), ("negative", ~c.positive & ~c.unsure),
                        ("negative_all", ~c.positive)):
        n = int(label.sum())
        out[name] = {"pairs": n, "per_query": round(n / len(c), 2),
                     "true_share": round(float(true[label].float().mean()) if n else 0.0, 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="a `finesearch synth` output folder")
    ap.add_argument("--split", default="train")
    ap.add_argument("--candidates", type=int, default=16, help="how deep each list is checked: 16, a step's "
                    "candidates (the figures in docs/evaluation.md); the trainer mines 100 (its candidate pool)")
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    doc = json.loads((args.data / "dataset.json").read_text())
    scenes = [im for im in doc["images"] if im["split"] == args.split]
    caps = [s["raw"] for sc in scenes for s in sc["sentences"]]
    check = checks_for(doc)
    b = load_bundle(args.model, device="cpu")
    items = read_dataset(args.data / "dataset.json", "karpathy", args.split)
    f = (cached_extract(b.backbone, items, args.data / "images", args.cache) if args.cache
         else extract(b.backbone, items, args.data / "images"))
    assert f.texts == caps, "the dataset's captions and the checker's are not in the same order"
    t2i, i2t = mine(f.img_glob, f.txt_glob, Truth(f.txt_img, f.texts), args.candidates, implied=True)
    fns = [check(c) for c in caps]  # only the mined pairs are checked: the whole table is N² parses

    def true_of(image: int, caption: int) -> bool:
        fn = fns[caption]
        return fn is not None and fn(scenes[image], set())

    t2i_true = torch.tensor([[true_of(j, q) for j in row] for q, row in enumerate(t2i.index.tolist())])
    i2t_true = torch.tensor([[true_of(q, t) for t in row] for q, row in enumerate(i2t.index.tolist())])
    print(json.dumps({"split": args.split, "candidates": args.candidates,
                      "t2i": _counts(t2i, t2i_true), "i2t": _counts(i2t, i2t_true)}, indent=2))


if __name__ == "__main__":
    main()
