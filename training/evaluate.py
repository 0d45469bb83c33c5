"""Retrieval evaluation: R@1/5/10 both directions, rSum, for three rankers side by side.

The protocol is vse_infty's: 5 captions per image; i2t ranks an image's best-ranked
ground-truth caption, t2i ranks each caption's image; COCO 1K averages five folds
of 1000 images, 5K uses all. Ranks count the candidates scored strictly higher
than the ground truth, so `recall` below is short enough to check by eye.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .features import Features
from .matcher import Matcher, PreparedImages, PreparedTexts

KS = (1, 5, 10)


def ranks_from_scores(sims: torch.Tensor, txt_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sims [Ni, Nt] → (i2t rank [Ni], t2i rank [Nt]), 0 = first."""
    ni = sims.shape[0]
    own = txt_img[None, :] == torch.arange(ni)[:, None]  # [Ni, Nt] ground truth
    best_gt = sims.masked_fill(~own, float("-inf")).max(dim=1).values  # best-scored GT caption per image
    i2t = (sims > best_gt[:, None]).sum(dim=1)
    gt_score = sims[txt_img, torch.arange(sims.shape[1])]  # [Nt]
    t2i = (sims.T > gt_score[:, None]).sum(dim=1)
    return i2t, t2i


def recall(i2t_rank: torch.Tensor, t2i_rank: torch.Tensor) -> dict[str, Any]:
    def r(ranks: torch.Tensor) -> dict[str, float]:
        return {f"r{k}": round(100.0 * float((ranks < k).float().mean()), 2) for k in KS}

    i2t, t2i = r(i2t_rank), r(t2i_rank)
    return {"i2t": i2t, "t2i": t2i, "rsum": round(sum(i2t.values()) + sum(t2i.values()), 2)}


@dataclass
class Prepared:
    img: PreparedImages
    txt: PreparedTexts


@torch.inference_mode()
def prepare(matcher: Matcher, f: Features, device: torch.device | str = "cpu", batch: int = 1024) -> Prepared:
    """Per-item matcher work (selection, adapters, LDA) once for the whole set."""
    matcher.eval()
    imgs, txts = [], []
    for lo in range(0, len(f.image_ids), batch):
        imgs.append(matcher.prepare_images(f.img_tok[lo:lo + batch].to(device), f.img_glob[lo:lo + batch].to(device)))
    for lo in range(0, len(f.texts), batch):
        txts.append(matcher.prepare_texts(f.txt_tok[lo:lo + batch].to(device), f.txt_mask[lo:lo + batch].to(device),
                                          f.txt_glob[lo:lo + batch].to(device)))
    return Prepared(
        PreparedImages(torch.cat([p.patches for p in imgs]), torch.cat([p.globals for p in imgs])),
        PreparedTexts(torch.cat([p.words for p in txts]), torch.cat([p.mask for p in txts]),
                      torch.cat([p.globals for p in txts]), torch.cat([p.lda for p in txts])),
    )


def _take_img(p: PreparedImages, idx: torch.Tensor) -> PreparedImages:
    return PreparedImages(p.patches[idx], p.globals[idx])


def _take_txt(p: PreparedTexts, idx: torch.Tensor) -> PreparedTexts:
    return PreparedTexts(p.words[idx], p.mask[idx], p.globals[idx], p.lda[idx])


@torch.inference_mode()
def two_stage_ranks(matcher: Matcher, p: Prepared, txt_img: torch.Tensor, candidates: int,
                    pairs_per_call: int = 32768) -> tuple[torch.Tensor, torch.Tensor]:
    """Global top-k, matcher rerank of those k; items beyond k keep their global order below them."""
    g = p.img.globals @ p.txt.globals.T  # [Ni, Nt]
    txt_img = txt_img.to(g.device)
    g_i2t, g_t2i = ranks_from_scores(g, txt_img)
    ni, nt = g.shape

    def rerank(n_q: int, k: int, top: torch.Tensor, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
               ) -> torch.Tensor:
        out = torch.empty(n_q, k, device=g.device)
        step = max(1, pairs_per_call // k)
        for lo in range(0, n_q, step):
            q = torch.arange(lo, min(lo + step, n_q), device=g.device)
            out[lo:lo + len(q)] = score(q.repeat_interleave(k), top[q].reshape(-1)).view(len(q), k)
        return out

    # t2i: each caption against its top-k images
    k = min(candidates, ni)
    top = g.T.topk(k, dim=1).indices  # [Nt, k]
    fine = rerank(nt, k, top, lambda t, i: matcher.score_pairs(_take_img(p.img, i), _take_txt(p.txt, t))[0])
    gt_in = top == txt_img[:, None]
    gt_fine = fine.masked_fill(~gt_in, float("-inf")).max(dim=1).values
    t2i = torch.where(gt_in.any(dim=1), (fine > gt_fine[:, None]).sum(dim=1), g_t2i)
    # i2t: each image against its top-k captions
    k = min(candidates, nt)
    top = g.topk(k, dim=1).indices  # [Ni, k]
    fine = rerank(ni, k, top, lambda i, t: matcher.score_pairs(_take_img(p.img, i), _take_txt(p.txt, t))[0])
    gt_in = txt_img[top] == torch.arange(ni, device=g.device)[:, None]
    gt_fine = fine.masked_fill(~gt_in, float("-inf")).max(dim=1).values
    i2t = torch.where(gt_in.any(dim=1), (fine > gt_fine[:, None]).sum(dim=1), g_i2t)
    return i2t.cpu(), t2i.cpu()


@torch.inference_mode()
def evaluate(matcher: Matcher, f: Features, candidates: int = 100, rankers: tuple[str, ...] = (
        "global", "two_stage", "exhaustive"), device: torch.device | str = "cpu") -> dict[str, Any]:
    """One fold: the three rankers with their wall time (matcher preparation counted in each that uses it)."""
    out: dict[str, Any] = {}
    txt_img = f.txt_img
    if "global" in rankers:
        t0 = time.perf_counter()
        sims = f.img_glob.to(device) @ f.txt_glob.to(device).T
        out["global"] = {**recall(*ranks_from_scores(sims.cpu(), txt_img)), "seconds": time.perf_counter() - t0}
    if "two_stage" in rankers:
        t0 = time.perf_counter()
        p = prepare(matcher, f, device)
        i2t, t2i = two_stage_ranks(matcher, p, txt_img, candidates)
        out["two_stage"] = {**recall(i2t, t2i), "candidates": candidates, "seconds": time.perf_counter() - t0}
    if "exhaustive" in rankers:
        t0 = time.perf_counter()
        p = prepare(matcher, f, device)
        sims = torch.cat([matcher.score_matrix(_take_img(p.img, torch.arange(lo, min(lo + 256, len(f.image_ids)))),
                                               p.txt) for lo in range(0, len(f.image_ids), 256)])
        out["exhaustive"] = {**recall(*ranks_from_scores(sims.cpu(), txt_img)), "seconds": time.perf_counter() - t0}
    for v in out.values():
        v["seconds"] = round(v["seconds"], 3)
    return out


def evaluate_protocol(matcher: Matcher, f: Features, protocol: str = "plain", candidates: int = 100,
                      rankers: tuple[str, ...] = ("global", "two_stage", "exhaustive"),
                      device: torch.device | str = "cpu") -> dict[str, Any]:
    """plain: all items; coco5k: all (expects 5000 images); coco1k: mean over 5 folds of 1000 images."""
    n = len(f.image_ids)
    if protocol in ("plain", "coco5k"):
        if protocol == "coco5k" and n != 5000:
            raise ValueError(f"coco5k needs the 5000 test images, this split has {n}")
        res = evaluate(matcher, f, candidates, rankers, device)
        return {**res, "protocol": protocol, "images": n, "captions": len(f.texts)}
    if protocol != "coco1k":
        raise ValueError(f"unknown protocol {protocol!r}; use plain, coco1k or coco5k")
    if n < 5000:
        raise ValueError(f"coco1k needs 5000 test images (5 folds of 1000), this split has {n}")
    folds = [evaluate(matcher, f.subset(range(k * 1000, (k + 1) * 1000)), candidates, rankers, device)
             for k in range(5)]
    merged: dict[str, Any] = {}
    for ranker in folds[0]:
        m: dict[str, Any] = {d: {r: round(sum(fo[ranker][d][r] for fo in folds) / 5, 2) for r in ("r1", "r5", "r10")}
                             for d in ("i2t", "t2i")}
        m["rsum"] = round(sum(m["i2t"].values()) + sum(m["t2i"].values()), 2)
        m["seconds"] = round(sum(fo[ranker]["seconds"] for fo in folds), 3)
        if "candidates" in folds[0][ranker]:
            m["candidates"] = candidates
        merged[ranker] = m
    return {**merged, "protocol": "coco1k", "images": n, "captions": len(f.texts)}


def format_table(res: dict[str, Any]) -> str:
    head = f"{'ranker':<12}{'i2t R@1':>9}{'R@5':>7}{'R@10':>7}{'t2i R@1':>9}{'R@5':>7}{'R@10':>7}{'rSum':>8}{'s':>9}"
    lines = [head, "-" * len(head)]
    for name in ("global", "two_stage", "exhaustive"):
        if name in res:
            r = res[name]
            lines.append(f"{name:<12}{r['i2t']['r1']:>9.1f}{r['i2t']['r5']:>7.1f}{r['i2t']['r10']:>7.1f}"
                         f"{r['t2i']['r1']:>9.1f}{r['t2i']['r5']:>7.1f}{r['t2i']['r10']:>7.1f}{r['rsum']:>8.1f}"
                         f"{r['seconds']:>9.2f}")
    return "\n".join(lines)
