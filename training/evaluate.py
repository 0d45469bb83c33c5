"""Retrieval evaluation: R@1/5/10 both directions, rSum, for three rankers side by side.

The protocol is vse_infty's: 5 captions per image; i2t ranks an image's best-ranked
ground-truth caption, t2i ranks each caption's image; COCO 1K averages five folds
of 1000 images, 5K uses all. Ranks count the candidates scored strictly higher
than the ground truth, so `recall` below is short enough to check by eye.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from .features import Features
from .model.matcher import DIRECTIONS, Matcher, PreparedImages, PreparedTexts

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
class PreparedSet:
    img: PreparedImages
    txt: PreparedTexts


@torch.inference_mode()
def prepare(matcher: Matcher, f: Features, device: torch.device | str = "cpu", batch: int = 1024) -> PreparedSet:
    """Per-item matcher work (selection, adapters, LDA) once for the whole set."""
    matcher.eval()
    imgs, txts = [], []
    for lo in range(0, len(f.image_ids), batch):
        imgs.append(matcher.prepare_images(f.img_tok[lo:lo + batch].to(device), f.img_glob[lo:lo + batch].to(device)))
    for lo in range(0, len(f.texts), batch):
        txts.append(matcher.prepare_texts(f.txt_tok[lo:lo + batch].to(device), f.txt_mask[lo:lo + batch].to(device),
                                          f.txt_glob[lo:lo + batch].to(device)))
    return PreparedSet(PreparedImages.cat(imgs), PreparedTexts.cat(txts).trimmed())


@dataclass
class CandidateScores:
    """Each query's global top-k and the global and patch scores of those k pairs, both directions.

    Fusion is a mix of the two, so once these are known, any fusion share costs a recombination only. With
    views, the region scores are kept apart too, so that their weight ρ (fine = patch + ρ·region) is as cheap.
    """

    t2i_top: torch.Tensor  # [Nt, k] image indices
    t2i_global: torch.Tensor
    t2i_patch: torch.Tensor
    i2t_top: torch.Tensor  # [Ni, k] caption indices
    i2t_global: torch.Tensor
    i2t_patch: torch.Tensor
    t2i_region: torch.Tensor | None = None  # [Nt, k] S_region (matchers with views)
    i2t_region: torch.Tensor | None = None
    # CAMP: the patch scores are logits, and this [direction, (scale, bias)] maps them to the fused fine score
    calibration: torch.Tensor | None = None

    def fine(self, direction: str, region_weight: float) -> torch.Tensor:
        patch, region = ((self.t2i_patch, self.t2i_region) if direction == "t2i" else
                         (self.i2t_patch, self.i2t_region))
        if self.calibration is not None:
            a, b = self.calibration[DIRECTIONS.index(direction)].tolist()
            patch = torch.sigmoid(a * patch + b)
        return patch if region is None else patch + region_weight * region


@torch.inference_mode()
def candidate_scores(matcher: Matcher, p: PreparedSet, candidates: int, pairs_per_call: int | None = None
                     ) -> CandidateScores:
    """Each query against its global top-k in dense blocks: a block of queries, each query's k candidates
    gathered once, one similarity product per query (its tokens against all k candidates' tokens), and the
    interaction over the block with the query's mask and weights broadcast, not copied per pair.

    Blocks of about a thousand pairs keep the interaction's [pairs, words, patches] intermediates in the CPU's
    caches: the whole seed-0 test split at 100 candidates took 3.3 s in blocks of 1024 pairs against 8.6 s in
    blocks of 8192 (bench/bench_blocks.py, docs/benchmarks.md). A GPU keeps the larger blocks it was given
    before (8192): fewer kernel launches."""
    if pairs_per_call is None:
        pairs_per_call = 1024 if p.img.patches.device.type == "cpu" else 8192
    g = p.img.globals @ p.txt.globals.T  # [Ni, Nt]
    ni, nt = g.shape
    lengths = p.txt.mask.sum(1)
    t2i_g, t2i_top = g.T.topk(min(candidates, ni), dim=1)
    i2t_g, i2t_top = g.topk(min(candidates, nt), dim=1)
    k = t2i_top.shape[1]
    t2i_p = torch.empty(nt, k, device=g.device)
    # captions of similar length share a block, trimmed to the block's longest: less padding per pair
    order = torch.argsort(lengths, stable=True)
    step = max(1, pairs_per_call // max(k, 1))
    for lo in range(0, nt, step):
        q = order[lo:lo + step]
        n = max(1, int(lengths[q].max()))
        words, mask = p.txt.words[q, :n], p.txt.mask[q, :n]
        cand = p.img.patches[t2i_top[q]]  # [Q, k, K, d]
        sim = torch.einsum("qld,qnkd->qnlk", words, cand)
        t2i_p[q] = matcher.pair_interaction(sim, cand, words[:, None], mask[:, None], p.txt.lda[q][:, None],
                                            p.txt.importance[q, :n][:, None]).patch
    k = i2t_top.shape[1]
    i2t_p = torch.empty(ni, k, device=g.device)
    step = max(1, pairs_per_call // max(k, 1))
    for lo in range(0, ni, step):
        q = torch.arange(lo, min(lo + step, ni), device=g.device)
        top = i2t_top[q]
        n = max(1, int(lengths[top].max()))
        words = p.txt.words[top, :n]  # [Q, k, L, d]
        sim = torch.einsum("qkd,qnld->qnlk", p.img.patches[q], words)
        i2t_p[q] = matcher.pair_interaction(sim, p.img.patches[q][:, None], words, p.txt.mask[top, :n],
                                            p.txt.lda[top], p.txt.importance[top, :n]).patch
    t2i_r = i2t_r = None
    if matcher.view_attn is not None:  # S_region of the same pairs: one dot product per view
        views, vecs = matcher.views_of(p.img), matcher.text_vectors(p.txt.words, p.txt.mask)
        t2i_r = torch.einsum("qnvd,qd->qnv", views[t2i_top], vecs).max(dim=-1).values
        i2t_r = torch.einsum("qvd,qnd->qnv", views, vecs[i2t_top]).max(dim=-1).values
    calibration = matcher.camp_calibration.detach().cpu().clone() if matcher.camp is not None else None
    return CandidateScores(t2i_top, t2i_g, t2i_p, i2t_top, i2t_g, i2t_p, t2i_r, i2t_r, calibration)


def two_stage_ranks_from(cs: CandidateScores, txt_img: torch.Tensor, g_i2t: torch.Tensor, g_t2i: torch.Tensor,
                         share_t2i: float, share_i2t: float, region_weight: float = 0.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks after reranking each query's top-k by (1−w)·global + w·fine; items beyond k keep their global
    order below them (so a ground truth outside the top-k keeps its global rank)."""
    txt_img = txt_img.to(cs.t2i_top.device)
    fine = (1 - share_t2i) * cs.t2i_global + share_t2i * cs.fine("t2i", region_weight)
    gt_in = cs.t2i_top == txt_img[:, None]
    gt_fine = fine.masked_fill(~gt_in, float("-inf")).max(dim=1).values
    t2i = torch.where(gt_in.any(dim=1), (fine > gt_fine[:, None]).sum(dim=1), g_t2i.to(fine.device))
    fine = (1 - share_i2t) * cs.i2t_global + share_i2t * cs.fine("i2t", region_weight)
    gt_in = txt_img[cs.i2t_top] == torch.arange(cs.i2t_top.shape[0], device=fine.device)[:, None]
    gt_fine = fine.masked_fill(~gt_in, float("-inf")).max(dim=1).values
    i2t = torch.where(gt_in.any(dim=1), (fine > gt_fine[:, None]).sum(dim=1), g_i2t.to(fine.device))
    return i2t.cpu(), t2i.cpu()


def shares(matcher: Matcher) -> tuple[float, float, float]:
    """The matcher's fusion share per direction (t2i, i2t) and the region weight ρ (0 without views)."""
    rho = float(matcher.region_mix.detach()) if matcher.region_mix is not None else 0.0
    return float(matcher.share[0]), float(matcher.share[1]), rho


@torch.inference_mode()
def two_stage_ranks(matcher: Matcher, p: PreparedSet, txt_img: torch.Tensor, candidates: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Global top-k, matcher rerank of those k (the service's two stages), with the matcher's fusion shares."""
    g_i2t, g_t2i = ranks_from_scores((p.img.globals @ p.txt.globals.T).cpu(), txt_img)
    cs = candidate_scores(matcher, p, candidates)
    return two_stage_ranks_from(cs, txt_img, g_i2t, g_t2i, *shares(matcher))


@torch.inference_mode()
def exhaustive_ranks(matcher: Matcher, p: PreparedSet, txt_img: torch.Tensor, block: int = 256
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The matcher over every pair; each direction ranks by its own fusion share."""
    ni = p.img.patches.shape[0]
    gs, ps = zip(*[matcher.score_matrices(p.img.take(torch.arange(lo, min(lo + block, ni))), p.txt)
                   for lo in range(0, ni, block)], strict=True)
    g, s = torch.cat(gs).cpu(), torch.cat(ps)
    w_t2i, w_i2t, _ = shares(matcher)  # the fine matrix has ρ·region in it
    i2t, _ = ranks_from_scores((1 - w_i2t) * g + w_i2t * matcher.fine_of(s, "i2t").cpu(), txt_img)
    _, t2i = ranks_from_scores((1 - w_t2i) * g + w_t2i * matcher.fine_of(s, "t2i").cpu(), txt_img)
    return i2t, t2i


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
        i2t, t2i = two_stage_ranks(matcher, prepare(matcher, f, device), txt_img, candidates)
        out["two_stage"] = {**recall(i2t, t2i), "candidates": candidates, "seconds": time.perf_counter() - t0}
    if "exhaustive" in rankers:
        t0 = time.perf_counter()
        i2t, t2i = exhaustive_ranks(matcher, prepare(matcher, f, device), txt_img)
        out["exhaustive"] = {**recall(i2t, t2i), "seconds": time.perf_counter() - t0}
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
