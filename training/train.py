"""Training: (1) a from-scratch backbone with the CLIP loss, (2) the matcher on frozen, cached features.

Lengths are optimiser steps (or a time budget, whichever ends first), not epochs, so a
small dataset gets as many updates as a large one. Seeded and resumable: checkpoints
hold the weights, optimiser, schedule, RNG state and best validation result, so
`--resume` continues where an interrupted run stopped.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibrate import tune
from .datasets import CaptionedImage
from .evaluate import evaluate, format_table, ranks_from_scores, recall
from .features import Features, cached_extract, extract, load_pixels
from .losses import contrastive_loss, filip_loss
from .matcher_train import FeatureSource, Frozen, Trunk, train_matcher
from .mining import Truth, bow_neighbours
from .model.backbone import Backbone
from .model.bundle import save_bundle
from .model.matcher import Matcher, MatcherConfig
from .progress import progress_bar
from .run_state import autocast, load_checkpoint, lr_schedule, optimiser_step, save_checkpoint, seed_everything
from .train_config import TrainConfig


def _round_to_fp16(backbone: Backbone) -> None:
    """The bundle stores fp16 weights: make the served backbone exactly the trained one."""
    with torch.no_grad():
        for t in list(backbone.model.parameters()) + list(backbone.model.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    backbone.invalidate_fingerprint()


def backbone_check(backbone: Backbone, items: list[CaptionedImage], images_dir: Path, workers: int,
                   limit: int = 1000) -> dict[str, Any]:
    """Global R@K of the backbone on (up to `limit` images of) a split, and whether it is near chance."""
    feats = extract(backbone, items[:limit], images_dir, workers=workers)
    res = recall(*ranks_from_scores(feats.img_glob @ feats.txt_glob.T, feats.txt_img))
    n = len(feats.image_ids)
    chance = 100.0 * (1 + 5 + 10) / max(n, 1) * 2 + 100.0 * (1 + 5 + 10) * 5 / max(len(feats.texts), 1)
    return {**res, "images": n, "chance_rsum": round(min(chance, 600.0), 2),
            "near_chance": bool(res["rsum"] < 3 * chance + 10)}


class BatchSampler:
    """Batches whose first part is random and whose last `hard` share comes in clusters of mutual neighbours.

    Neighbours start as images described with the most similar words (bow_neighbours) and can be replaced
    by the model's own confusions as training goes (`mine`).
    """

    def __init__(self, items: list[CaptionedImage], batch: int, hard: float, cluster: int = 8) -> None:
        self.n, self.batch = len(items), min(batch, len(items))
        self.cluster = max(2, min(cluster, self.n))
        self.clusters = int(self.batch * hard) // self.cluster if hard > 0 else 0
        self.neighbours: torch.Tensor | None = None
        if self.clusters:
            self.neighbours = bow_neighbours([it.captions for it in items], 2 * self.cluster)
        self.perm, self.pos = torch.randperm(self.n), 0

    def _take(self, count: int) -> torch.Tensor:
        if self.pos + count > self.n:
            self.perm, self.pos = torch.randperm(self.n), 0
        out = self.perm[self.pos:self.pos + count]
        self.pos += count
        return out

    def __next__(self) -> tuple[torch.Tensor, int]:
        """(image indices, how many of the first ones are random)."""
        if not self.clusters or self.neighbours is None or self.neighbours.shape[1] == 0:
            return self._take(self.batch), self.batch
        n_random = self.batch - self.clusters * self.cluster
        anchors = self._take(self.clusters)
        pick = torch.rand(len(anchors), self.neighbours.shape[1]).argsort(dim=1)[:, : self.cluster - 1]
        members = torch.cat([anchors[:, None], self.neighbours[anchors[:, None], pick]], dim=1).flatten()
        hard = list(dict.fromkeys(members.tolist()))
        rest = [i for i in self._take(n_random + self.batch).tolist() if i not in set(hard)][:n_random]
        return torch.tensor(rest + hard, dtype=torch.long), len(rest)

    @torch.inference_mode()
    def mine(self, globals_: torch.Tensor, chunk: int = 2048) -> None:
        """Replace the neighbours by each image's most similar images under the current model."""
        k = min(2 * self.cluster, self.n - 1)
        out = []
        for lo in range(0, self.n, chunk):
            sims = globals_[lo:lo + chunk] @ globals_.T
            sims[torch.arange(sims.shape[0]), torch.arange(lo, lo + sims.shape[0])] = -2.0
            out.append(sims.topk(k, dim=1).indices.cpu())
        self.neighbours = torch.cat(out)


@torch.inference_mode()
def _image_globals(backbone: Backbone, pixels: torch.Tensor, precision: str, batch: int = 512) -> torch.Tensor:
    backbone.model.eval()
    out = []
    with autocast(backbone.device, precision):
        for lo in range(0, len(pixels), batch):
            out.append(backbone.image_features(backbone.pixels(pixels[lo:lo + batch])).globals.float())
    return torch.cat(out)


def train_backbone(backbone: Backbone, items: list[CaptionedImage], images_dir: Path, cfg: TrainConfig,
                   ckpt_path: Path, resume: bool, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Contrastive (CLIP) training of a backbone from scratch, plus a token-level (FILIP) term, for cfg.clip_steps.

    Batches put caption-word neighbours together (cfg.hard_batches) and never push apart an image and a
    caption that truly describes it (an equivalent caption of another image in the batch).
    """
    model = backbone.model
    pixels = torch.from_numpy(load_pixels(items, images_dir, backbone.image_size, cfg.workers, progress))
    captions, flat, first, truth = _caption_index(items)
    total = max(1, cfg.clip_steps)
    sampler = BatchSampler(items, cfg.clip_batch, cfg.hard_batches, cfg.cluster)
    mine_from = int(total * cfg.mine_after) if cfg.mine_every > 0 else total + 1
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.1)
    sched = lr_schedule(opt, "cosine", total, warmup=min(200, total // 10))
    step, history = 0, []
    if resume and ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path, model, opt, sched)
        step, history = ck["step"], ck["history"]
        log(f"resumed backbone training after step {step}")
    t_start = time.perf_counter()
    deadline = t_start + cfg.clip_minutes * 60 if cfg.clip_minutes else None
    log_every = max(1, min(200, total // 10))
    losses: list[float] = []
    t0, seen = time.perf_counter(), 0
    bar = progress_bar(total=total, initial=step, disable=not progress, desc="backbone")
    model.train()
    while step < total:
        if step >= mine_from and (step - mine_from) % cfg.mine_every == 0 and sampler.clusters:
            sampler.mine(_image_globals(backbone, pixels, cfg.clip_precision))
            model.train()
        idx, n_random = next(sampler)
        cap = torch.tensor([first[i] + random.randrange(len(captions[i])) for i in idx.tolist()], dtype=torch.long)
        loss = _clip_batch_loss(backbone, pixels[idx], [flat[c] for c in cap.tolist()],
                                truth.matches(idx[:, None], cap[None, :]), n_random, cfg)
        optimiser_step(opt, sched, loss, list(model.parameters()), cfg.grad_clip)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        seen += len(idx)
        losses.append(loss.item())
        bar.update(1)
        over = deadline is not None and time.perf_counter() > deadline
        if step % log_every == 0 or step == total or over:
            history.append({"step": step, "loss": round(float(np.mean(losses)), 4),
                            "examples_per_s": round(seen / (time.perf_counter() - t0), 1)})
            log(f"backbone step {step}/{total}: loss {history[-1]['loss']:.3f} (chance "
                f"{math.log(len(idx)) * (1 + cfg.token_loss):.2f}), {history[-1]['examples_per_s']:.0f} ex/s")
            losses, t0, seen = [], time.perf_counter(), 0
            save_checkpoint(ckpt_path, model, opt, sched, step=step, history=history)
        if over:
            log("backbone time budget reached")
            break
    bar.close()
    model.eval()
    _round_to_fp16(backbone)
    return {"steps": step, "history": history, "seconds": round(time.perf_counter() - t_start, 1)}


def _caption_index(items: list[CaptionedImage]) -> tuple[list[list[str]], list[str], np.ndarray, Truth]:
    """(captions per image, all captions flat, each image's first caption in `flat`, which caption is true of
    which image)."""
    captions = [it.captions for it in items]
    flat = [c for caps in captions for c in caps]
    first = np.cumsum([0] + [len(c) for c in captions])
    return captions, flat, first, Truth(torch.tensor([i for i, caps in enumerate(captions) for _ in caps],
                                                     dtype=torch.long), flat)


def _clip_batch_loss(backbone: Backbone, pixels: torch.Tensor, texts: list[str], matches: torch.Tensor,
                     n_random: int, cfg: TrainConfig) -> torch.Tensor:
    """One batch's contrastive loss (+ the FILIP term). `matches[i, j]`: caption j truly describes image i, so
    off the diagonal such pairs are not pushed apart; the hard-mined part of the batch (after `n_random`)
    enters the global term only with cfg.hard_global."""
    exclude = (matches & ~torch.eye(len(texts), dtype=torch.bool)).to(backbone.device)
    with autocast(backbone.device, cfg.clip_precision):
        imf = backbone.image_features(backbone.pixels(pixels))
        txf = backbone.text_features(backbone.tokenize(texts))
        scale = backbone.model.logit_scale.exp()
        g = slice(None) if cfg.hard_global else slice(0, n_random)
        loss = contrastive_loss(imf.globals[g], txf.globals[g], scale, exclude[g, g])
        if cfg.token_loss > 0:
            loss = loss + cfg.token_loss * filip_loss(imf.tokens, txf.tokens, txf.mask, scale, exclude,
                                                     centre=cfg.token_centre)
    return loss


@torch.inference_mode()
def trunk_features(backbone: Backbone, items: list[CaptionedImage], images_dir: Path, stop: int, workers: int,
                   progress: bool, batch: int = 128) -> Trunk:
    pixels = load_pixels(items, images_dir, backbone.image_size, workers, progress)
    img = torch.cat([backbone.image_trunk(backbone.pixels(pixels[lo:lo + batch]), stop).half().cpu()
                     for lo in range(0, len(items), batch)])
    texts = [c for it in items for c in it.captions]
    ids = backbone.cut_ids(backbone.tokenize(texts))
    txt = torch.cat([backbone.text_trunk(ids[lo:lo + batch], stop).half().cpu() for lo in range(0, len(texts), batch)])
    txt_img = torch.tensor([i for i, it in enumerate(items) for _ in it.captions], dtype=torch.long)
    return Trunk(backbone, stop, [it.image_id for it in items], img, txt, ids.cpu(), txt_img, texts)


def unfreeze_last(backbone: Backbone, n: int) -> list[torch.nn.Parameter]:
    """Freeze the backbone except the last `n` blocks of both towers and their output norms/projections."""
    if not 0 < n <= backbone.depth:
        raise ValueError(f"unfreeze_blocks must be between 1 and {backbone.depth} for {backbone.name}")
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    params = [q for part in backbone.unfreeze_parts(n)
              for q in ([part] if isinstance(part, torch.nn.Parameter) else part.parameters())]
    for p in params:
        p.requires_grad_(True)
    return params


def matcher_config_for(backbone: Backbone, overrides: dict[str, Any]) -> MatcherConfig:
    grid = backbone.grid
    base = MatcherConfig(dim=backbone.embed_dim, num_patches=grid[0] * grid[1], max_words=backbone.max_words)
    return MatcherConfig.from_dict({**asdict(base), **overrides})


def _backbone_stage(backbone: Backbone, train_items: list[CaptionedImage], val_items: list[CaptionedImage] | None,
                    images_dir: Path, cfg: TrainConfig, work: Path, resume: bool, progress: bool, log: Any
                    ) -> dict[str, Any]:
    """The backbone trained from scratch, checked on validation, and a warning when it learned almost nothing
    (a matcher on such features cannot rerank anything)."""
    stage = train_backbone(backbone, train_items, images_dir, cfg, work / "backbone.ckpt", resume, progress, log)
    if val_items:
        check = backbone_check(backbone, val_items, images_dir, cfg.workers)
        stage["val"] = check
        log(f"backbone on validation ({check['images']} images): global rSum {check['rsum']:.1f} (i2t R@1 "
            f"{check['i2t']['r1']:.1f}, t2i R@1 {check['t2i']['r1']:.1f}; chance ≈ {check['chance_rsum']})")
    history = stage["history"]
    chance_loss = math.log(min(cfg.clip_batch, len(train_items))) * (1 + cfg.token_loss)
    stalled = bool(history) and history[-1]["loss"] > 0.75 * chance_loss
    if stalled or stage.get("val", {}).get("near_chance"):
        stage["warning"] = "near chance"
        log(f"WARNING: the backbone learned almost nothing (training loss {history[-1]['loss']:.2f} against "
            f"{chance_loss:.2f} at chance). Train it longer (--clip-steps, --clip-minutes), check that the "
            "captions describe their images, or start from pretrained weights (--backbone NAME --pretrained "
            "TAG|FILE).")
    return stage


def run_training(backbone: Backbone, train_items: list[CaptionedImage], val_items: list[CaptionedImage] | None,
                 images_dir: Path, out: Path, cfg: TrainConfig, *, from_scratch: bool, resume: bool = False,
                 progress: bool = True, data_info: dict[str, Any] | None = None, log: Any = print,
                 keep_backbone: bool = False) -> dict[str, Any]:
    """The whole recipe; writes the model bundle to `out` and returns its config's training section.

    `keep_backbone`: the backbone is already trained (taken from a bundle): only the matcher trains.
    """
    seed_everything(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    work.mkdir(exist_ok=True)
    report: dict[str, Any] = {"config": asdict(cfg), "data": data_info or {}}
    if from_scratch and cfg.clip_steps > 0 and not keep_backbone:
        report["backbone"] = _backbone_stage(backbone, train_items, val_items, images_dir, cfg, work, resume,
                                             progress, log)
    device = backbone.device
    source: FeatureSource
    val: FeatureSource | None
    extra_params: list[torch.nn.Parameter] | None = None
    if cfg.unfreeze_blocks > 0:  # the heads change while training: cache the frozen trunk instead of features
        stop = backbone.depth - cfg.unfreeze_blocks
        source = trunk_features(backbone, train_items, images_dir, stop, cfg.workers, progress)
        val = trunk_features(backbone, val_items, images_dir, stop, cfg.workers, progress) if val_items else None
        extra_params = unfreeze_last(backbone, cfg.unfreeze_blocks)
    else:
        cache = work / "features"
        source = Frozen(cached_extract(backbone, train_items, images_dir, cache, workers=cfg.workers,
                                       progress=progress), device)
        val = Frozen(cached_extract(backbone, val_items, images_dir, cache, workers=cfg.workers, progress=progress),
                     device) if val_items else None
    seed_everything(cfg.seed + 1)
    matcher = Matcher(matcher_config_for(backbone, cfg.matcher))
    report["matcher"] = train_matcher(
        matcher, source, val, cfg, work / "matcher.ckpt", resume, device, extra_params=extra_params,
        extra_modules={"backbone": backbone.model} if extra_params else None, progress=progress, log=log)
    if extra_params:
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        _round_to_fp16(backbone)
    val_f: Features | None = val.features() if val is not None else None
    if val_f is not None and cfg.tune_fusion:
        fusion = tune(matcher, val_f, cfg.calibrate_candidates, device)
        report["fusion"] = fusion
        log(f"fusion patch share per direction {fusion['shares']} (val rSum {fusion['val_global']['rsum']} "
            f"global-only, {fusion['val_two_stage']['rsum']} two-stage at {cfg.calibrate_candidates} candidates)")
    if val_f is not None:
        final = evaluate(matcher, val_f, cfg.calibrate_candidates, ("global", "two_stage"), device)
        report["val"] = final
        log(format_table(final))
    save_bundle(out, backbone, matcher, include_backbone=from_scratch or cfg.unfreeze_blocks > 0,
                extra={"training": report})
    (out / "training_log.json").write_text(json.dumps(report, indent=2, default=str))
    return report
