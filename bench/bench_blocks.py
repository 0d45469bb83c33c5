"""How block size sets the speed of the two evaluation rankers on this machine.

    python bench/bench_blocks.py --model models/demo --data data/synth --split test --cache data/cache

Two-stage (`candidate_scores`: both directions' global top-k pairs, in image-major blocks) and exhaustive
(`Matcher.score_matrices`: every pair) both run the interaction over blocks of pairs; a block's
[pairs, words, patches] intermediates either fit the CPU's caches or do not, which moved their time by
3–4× here. Prints the median of `--repeats` runs per block size: two-stage over the whole split,
exhaustive over the first `--pairs-side` images × captions.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from training.datasets import read_dataset
from training.evaluate import candidate_scores, prepare
from training.features import cached_extract, extract
from training.model.bundle import load_bundle


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/demo"))
    ap.add_argument("--data", type=Path, default=Path("data/synth"), help="a folder with dataset.json and images/")
    ap.add_argument("--split", default="test")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--two-stage-blocks", type=_ints, default=[256, 1024, 2048, 8192])
    ap.add_argument("--exhaustive-blocks", type=_ints, default=[1024, 2048, 8192, 65536])
    ap.add_argument("--pairs-side", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    b = load_bundle(args.model, device="cpu")
    assert b.matcher is not None, "a bundle with a matcher"
    items = read_dataset(args.data / "dataset.json", "karpathy", args.split)
    f = (cached_extract(b.backbone, items, args.data / "images", args.cache) if args.cache
         else extract(b.backbone, items, args.data / "images"))
    p = prepare(b.matcher, f)
    print(f"{len(f.image_ids)} images, {len(f.texts)} captions, {torch.get_num_threads()} threads")

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t0)
        return statistics.median(runs)

    with torch.inference_mode():
        for n in args.two_stage_blocks:
            s = timed(lambda n=n: candidate_scores(b.matcher, p, args.candidates, n))
            print(f"two-stage  {args.candidates} candidates  block {n:>6} pairs  {s:7.2f} s")
        side = torch.arange(min(args.pairs_side, len(f.image_ids), len(f.texts)))
        img, txt = p.img.take(side), p.txt.take(side)
        for n in args.exhaustive_blocks:
            s = timed(lambda n=n: b.matcher.score_matrices(img, txt, n))
            print(f"exhaustive {len(side)}×{len(side)} pairs   block {n:>6} pairs  {s:7.2f} s")


if __name__ == "__main__":
    main()
