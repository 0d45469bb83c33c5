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
    # each caption's first caption with the same text: identical captions share one pair score, so their
    # ties with each other stay exact ties (as in the global and exhaustive rankers), and are scored once
    same_text: torch.Tensor | None = None

    def text_ids(self) -> torch.Tensor:
        """[Nt] each caption's text as a caption index (`same_text`; each caption its own without it)."""
        if self.same_text is not None:
            return self.same_text
        return torch.arange(self.txt.words.shape[0], device=self.txt.words.device)


def first_of_same_text(texts: list[str]) -> torch.Tensor:
    """[Nt] index of the first caption whose text equals each caption's."""
    first: dict[str, int] = {}
    return torch.tensor([first.setdefault(t, i) for i, t in enumerate(texts)], dtype=torch.long)


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
    return PreparedSet(PreparedImages.cat(imgs), PreparedTexts.cat(txts).trimmed(),
                       first_of_same_text(f.texts).to(device))


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


def _pair_chunks(img: torch.Tensor, length: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (any order) → a table [chunks, chunk] of pair indices (−1 = empty) where each row holds
    up to `chunk` pairs of one image, its captions in length order, and each row's longest caption.

    A row then costs one image's patches (broadcast, never copied per pair) and its captions' words trimmed
    to nearly their own length; rows of similar length go into the same block."""
    n_img = int(img.max()) + 1 if img.numel() else 0
    by_len = torch.argsort(length, stable=True)
    order = by_len[torch.argsort(img[by_len], stable=True)]  # image, then caption length
    counts = torch.bincount(img, minlength=n_img)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=img.device) - start[img[order]]
    per_img = (counts + chunk - 1) // chunk
    base = torch.cumsum(per_img, 0) - per_img
    row = base[img[order]] + rank // chunk
    table = torch.full((int(per_img.sum()), chunk), -1, dtype=torch.long, device=img.device)
    table[row, rank % chunk] = order
    longest = torch.zeros(table.shape[0], dtype=length.dtype, device=img.device).scatter_reduce(
        0, row, length[order], "amax")
    return table, longest


@torch.inference_mode()
def pair_patch_scores(matcher: Matcher, p: PreparedSet, img: torch.Tensor, txt: torch.Tensor,
                      pairs_per_call: int | None = None, chunk: int = 32) -> torch.Tensor:
    """The raw fine score (`Interaction.patch`) of the pairs (img[i], txt[i]), in dense blocks.

    Image-major: a block is a few images, each with up to `chunk` of its captions, so only the captions'
    words are gathered ([pairs, words, d]), not the images' patches ([pairs, patches, d], 4–6× larger), and
    each similarity product is one image's patches against its captions' words.

    Blocks of about a thousand pairs keep the interaction's [pairs, words, patches] intermediates in the CPU's
    caches (bench/bench_blocks.py, docs/benchmarks.md); a GPU takes blocks of 8192: fewer kernel launches."""
    if pairs_per_call is None:
        pairs_per_call = 1024 if p.img.patches.device.type == "cpu" else 8192
    lengths = p.txt.mask.sum(1)
    table, longest = _pair_chunks(img, lengths[txt], chunk)
    out = torch.empty(img.shape[0], device=p.img.patches.device)
    rows = torch.argsort(longest, stable=True)
    step = max(1, pairs_per_call // chunk)
    for lo in range(0, rows.numel(), step):
        r = rows[lo:lo + step]
        idx = table[r]  # [B, chunk]
        real = idx >= 0
        pair = idx.clamp(min=0)  # an empty slot scores the row's first pair again; dropped below
        pair = torch.where(real, pair, pair[:, :1])
        n = max(1, int(longest[r].max()))
        t = txt[pair]
        patches, words = p.img.patches[img[pair[:, 0]]], p.txt.words[t, :n]  # [B, K, d], [B, chunk, L, d]
        b, c = words.shape[:2]  # one product per image, written straight in words × patches order
        sim = torch.bmm(words.reshape(b, c * n, -1), patches.transpose(1, 2)).view(b, c, n, -1)
        score = matcher.pair_interaction(sim, patches[:, None], words, p.txt.mask[t, :n], p.txt.lda[t],
                                         p.txt.importance[t, :n]).patch
        out[idx[real]] = score[real]
    return out


@torch.inference_mode()
def candidate_scores(matcher: Matcher, p: PreparedSet, candidates: int, pairs_per_call: int | None = None
                     ) -> CandidateScores:
    """Each query's global top-k, both directions, and the fine scores of those pairs.

    A pair's raw fine score does not depend on the direction (only its fusion and CAMP's calibration do), and
    nearly every image→text pair is also a text→image pair (an image's nearest captions have it among their
    nearest images: 99,991 of the seed-0 test split's 100,000 i2t pairs at k = 100 were), so the union of both
    directions' pairs is scored once (`pair_patch_scores`), and a caption that repeats an earlier caption's
    text takes that caption's scores."""
    g = p.img.globals @ p.txt.globals.T  # [Ni, Nt]
    ni, nt = g.shape
    t2i_g, t2i_top = g.T.topk(min(candidates, ni), dim=1)
    i2t_g, i2t_top = g.topk(min(candidates, nt), dim=1)
    text = p.text_ids()
    t2i_keys = t2i_top * nt + text[:, None]
    i2t_keys = torch.arange(ni, device=g.device)[:, None] * nt + text[i2t_top]
    keys, where = torch.unique(torch.cat([t2i_keys.flatten(), i2t_keys.flatten()]), return_inverse=True)
    scores = pair_patch_scores(matcher, p, keys // nt, keys % nt, pairs_per_call)
    t2i_p = scores[where[:t2i_keys.numel()]].view_as(t2i_top)
    i2t_p = scores[where[t2i_keys.numel():]].view_as(i2t_top)
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
    """The matcher over every pair; each direction ranks by its own fusion share. Like two-stage, it scores
    each distinct caption text once (see `PreparedSet.same_text`)."""
    ni = p.img.patches.shape[0]
    text = p.text_ids()
    distinct, column = torch.unique(text, return_inverse=True)
    by_length = torch.argsort(p.txt.mask[distinct].sum(1), stable=True)  # each block trimmed to its longest
    column = torch.argsort(by_length)[column]
    txt = p.txt.take(distinct[by_length])
    gs, ps = zip(*[matcher.score_matrices(p.img.take(torch.arange(lo, min(lo + block, ni))), txt)
                   for lo in range(0, ni, block)], strict=True)
    g, s = torch.cat(gs)[:, column].cpu(), torch.cat(ps)[:, column]
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
