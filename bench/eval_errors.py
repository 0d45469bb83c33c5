"""What a model's rankers get wrong on a synthetic split, next to an oracle, by kind of mistake.

    python bench/eval_errors.py --model models/demo --data data/synth --split test

For the global and the two-stage ranker: the t2i top-1 mistakes by kind (bench/synth_truth.py), and the
oracle that reorders the global top-k by whether each caption is true of each image (keeping the global
order among true ones): the headroom a reranker of those k candidates has.

`t2i_truth` asks of each score alone (global cosine, the matcher's fine score, the fused two-stage score)
how well it tells, within a caption's global top-k, the images the caption is true of from the others: the
AUC over (true, false) pairs of each caption's candidates, the share of true images among its top 1 and 5, and
the mean within-list z-score of true images that hold objects the caption does not name, of true images that
hold only the named ones, and of false images. A score that ranks a partly described image below false ones
cannot help text→image search, however well it ranks captions for an image. `t2i_partial_captions` splits
text→image R@1/R@5 between captions that name only part of their own image and the rest.
"""

from __future__ import annotations

import argparse
import json
import re
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
from training.synth import SHAPES
from training.synth_grid import SHAPES as SHAPES_GRID


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
    fine = cs.fine("t2i", rho)
    fused = (1 - w_t2i) * cs.t2i_global + w_t2i * fine
    top1 = {"global": g.T.argmax(dim=1), "fine": cs.t2i_top.gather(1, fine.argmax(dim=1, keepdim=True))[:, 0],
            "two_stage": cs.t2i_top.gather(1, fused.argmax(dim=1, keepdim=True))[:, 0]}
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
    extra = _extra_objects(doc, scenes, caps, cs.t2i_top)
    out["t2i_truth"] = truth_separation(true.gather(1, cs.t2i_top), extra,
                                        {"global": cs.t2i_global, "fine": fine, "two_stage": fused})
    own_t = torch.tensor(own)
    partial = _extra_objects(doc, scenes, caps, own_t[:, None])[:, 0]  # its own image holds an unnamed object
    out["t2i_partial_captions"] = partial_recall(cs.t2i_top == own_t[:, None], partial,
                                                 {"global": cs.t2i_global, "fine": fine, "two_stage": fused})
    out["t2i_r1_expected_random_among_true"] = round(100.0 * sum(1.0 / len(x) for x in fits) / len(fits), 2)
    print(json.dumps(out, indent=2))


def _extra_objects(doc: dict, scenes: list[dict], caps: list[str], top: torch.Tensor) -> torch.Tensor:
    """[captions, k]: does the candidate image hold more objects than the caption names (by its shape words)?"""
    shapes = SHAPES_GRID if doc.get("style") == "grid" else SHAPES
    named = torch.tensor([sum(len(re.findall(rf"\b{s}\b", c.lower())) for s in shapes) for c in caps])
    held = torch.tensor([len(sc["meta_objects"]) for sc in scenes])
    return held[top] > named[:, None]


def partial_recall(gt: torch.Tensor, partial: torch.Tensor, scores: dict[str, torch.Tensor]) -> dict:
    """t2i R@1/R@5 within the top-k, per score, apart for captions that name only part of their own image
    (`partial` [captions]: it holds an object they do not name) and for the rest: where text→image recall is
    lost. `gt` [captions, k]: is the candidate the caption's image (a caption whose image is outside its top-k
    counts as missed). None for a group without captions."""
    inside = gt.any(1)
    out: dict = {"share_of_captions": round(100.0 * float(partial.float().mean()), 2)}
    for name, s in scores.items():
        s = s.float().cpu()
        own = s.masked_fill(~gt, float("-inf")).max(1, keepdim=True).values
        rank = (s > own).sum(1)
        row: dict = {}
        for part, sel in (("partial", partial), ("complete", ~partial)):
            for k in (1, 5):
                hit = ((rank < k) & inside)[sel]
                row[f"{part}_r{k}"] = round(100.0 * float(hit.float().mean()), 2) if len(hit) else None
        out[name] = row
    return out


def truth_separation(true: torch.Tensor, extra: torch.Tensor, scores: dict[str, torch.Tensor]) -> dict:
    """Per score [captions, k]: AUC of true against false candidates per caption (mean over captions with
    both), the share of true images among its top 1 and top 5, and mean within-list z-scores by kind."""
    out = {}
    both = true.any(1) & (~true).any(1)
    pairs = true[:, :, None] & ~true[:, None, :]
    for name, s in scores.items():
        s = s.float().cpu()
        wins = ((s[:, :, None] > s[:, None, :]) & pairs).sum((1, 2)).float()
        auc = (wins[both] / pairs[both].sum((1, 2)).float()).mean()
        order = s.argsort(dim=1, descending=True)
        z = (s - s.mean(1, keepdim=True)) / s.std(1, keepdim=True).clamp(min=1e-9)
        out[name] = {"auc": round(float(auc), 4),
                     "true_in_top1": round(100.0 * float(true.gather(1, order[:, :1]).float().mean()), 2),
                     "true_in_top5": round(100.0 * float(true.gather(1, order[:, :5]).float().mean()), 2),
                     "z_true_with_unnamed_objects": round(float(z[true & extra].mean()), 3),
                     "z_true_named_only": round(float(z[true & ~extra].mean()), 3),
                     "z_false": round(float(z[~true].mean()), 3)}
    return out


if __name__ == "__main__":
    main()
