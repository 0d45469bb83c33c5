"""What a model's rankers get wrong on a synthetic split, next to an oracle, by kind of mistake.

    python bench/eval_errors.py --model models/demo --data data/synth --split test

For the global and the two-stage ranker: the t2i top-1 mistakes by kind (bench/synth_truth.py), and the
oracle that reorders the global top-k by whether each caption is true of each image (keeping the global
order among true ones): the headroom a reranker of those k candidates has.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_truth import checks_for, mistake, truth_table

from training.datasets import read_dataset
from training.evaluate import candidate_scores, prepare, ranks_from_scores, recall, shares
from training.features import cached_extract, extract
from training.model.bundle import load_bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="a `finesearch synth` output folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    doc = json.loads((args.data / "dataset.json").read_text())
    scenes, caps, own, fits = truth_table(doc, args.split)
    b = load_bundle(args.model, device="cpu")
    items = read_dataset(args.data / "dataset.json", "karpathy", args.split)
    f = (cached_extract(b.backbone, items, args.data / "images", args.cache) if args.cache
         else extract(b.backbone, items, args.data / "images"))
    assert f.texts == caps, "the dataset's captions and the checker's are not in the same order"
    p = prepare(b.matcher, f)
    g = (p.img.globals @ p.txt.globals.T).cpu()
    cs = candidate_scores(b.matcher, p, args.candidates)
    w_t2i, _, rho = shares(b.matcher)
    fused = (1 - w_t2i) * cs.t2i_global + w_t2i * cs.fine("t2i", rho)
    top1 = {"global": g.T.argmax(dim=1), "two_stage": cs.t2i_top.gather(1, fused.argmax(dim=1, keepdim=True))[:, 0]}
    check = checks_for(doc)
    out: dict = {"model": b.id, "split": args.split, "candidates": args.candidates}
    for name, top in top1.items():
        wrong = [(t, int(j)) for t, j in enumerate(top.tolist()) if j != own[t]]
        kinds = Counter(mistake(scenes, check(caps[t]), own[t], j) for t, j in wrong)  # type: ignore[arg-type]
        out[name] = {"t2i_r1": round(100.0 * (1 - len(wrong) / len(caps)), 2), "mistakes": dict(kinds.most_common())}
    # oracle: within each caption's global top-k, true images first (global order among them)
    true = torch.zeros(len(caps), len(scenes), dtype=torch.bool)
    for t, fit in enumerate(fits):
        true[t, fit] = True
    k = min(args.candidates, len(scenes))
    top = g.T.topk(k, dim=1).indices
    bonus = torch.zeros_like(g.T)
    bonus.scatter_(1, top, 10.0 * true.gather(1, top).float())  # only candidates inside the top-k move up
    oracle_t2i = g.T + bonus
    i2t_rank, _ = ranks_from_scores(g, f.txt_img)  # the oracle reorders captions' image lists (t2i) only
    _, t2i_rank = ranks_from_scores(oracle_t2i.T, f.txt_img)
    out["oracle_t2i_top_k"] = {"t2i": recall(i2t_rank, t2i_rank)["t2i"]}
    out["t2i_r1_expected_random_among_true"] = round(100.0 * sum(1.0 / len(x) for x in fits) / len(fits), 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
