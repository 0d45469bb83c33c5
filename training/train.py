"""Training: (1) a from-scratch backbone with the CLIP loss, (2) the matcher on frozen, cached features.

Seeded and resumable: a checkpoint after every epoch of each stage holds the
weights, optimiser, schedule, RNG state and best validation result, so
`--resume` continues where an interrupted run stopped.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from tqdm import tqdm

from .backbone import Backbone, pad_words
from .bundle import save_bundle
from .datasets import CaptionedImage
from .evaluate import evaluate, format_table
from .features import Features, cached_extract, load_pixels
from .matcher import Matcher, MatcherConfig, triplet_loss


@dataclass
class TrainConfig:
    seed: int = 0
    # stage 1: backbone from scratch (skipped for pretrained backbones)
    clip_epochs: int = 0
    clip_minutes: float | None = None  # wall-clock budget, whichever ends first
    clip_batch: int = 128
    clip_lr: float = 1e-3
    token_loss: float = 0.0  # FILIP-style word–patch contrastive term weight
    # stage 2: matcher
    epochs: int = 10
    minutes: float | None = None
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # or "step"
    grad_clip: float = 2.0
    margin: float = 0.2
    warmup_epochs: int = 1  # all-violations loss before hardest negatives
    patch_loss: float = 1.0  # weight of an extra triplet term on the word–patch score alone
    tune_fusion: bool = True  # pick the fusion's patch share on the validation split after training
    unfreeze_blocks: int = 0  # fine-tune the last N blocks of both towers with the matcher (pretrained backbones)
    backbone_lr_scale: float = 0.1  # their learning rate relative to the matcher's
    val_candidates: int = 20
    workers: int = 4
    matcher: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _schedule(opt: torch.optim.Optimizer, kind: str, total: int,
              warmup: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total // 3), gamma=0.1)
    if kind != "cosine":
        raise ValueError(f"unknown schedule {kind!r}; use cosine or step")

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, **extra: Any) -> None:
    """Everything an interrupted run needs to continue exactly: weights, optimiser, schedule, RNG, progress."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": _rng_state(), **extra}, tmp)
    tmp.replace(path)


def _load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any) -> dict[str, Any]:
    ck = torch.load(path, weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    sched.load_state_dict(ck["sched"])
    _set_rng_state(ck["rng"])
    return ck


def _round_to_fp16(backbone: Backbone) -> None:
    """The bundle stores fp16 weights: make the served backbone exactly the trained one."""
    with torch.no_grad():
        for t in list(backbone.model.parameters()) + list(backbone.model.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    backbone.invalidate_fingerprint()


def filip_loss(img_tok: torch.Tensor, txt_tok: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Token-wise max similarity contrastive loss (FILIP): trains patch and word tokens directly."""
    sim = torch.einsum("imd,tld->itml", img_tok, txt_tok)  # [B, B, M, L]
    m = mask[None, :, None, :]
    i2t = sim.masked_fill(~m, -1e4).max(dim=3).values.mean(dim=2)  # each patch's best word
    t2i = (sim.max(dim=2).values * mask[None]).sum(-1) / mask.sum(-1).clamp(min=1)[None]  # each word's best patch
    labels = torch.arange(img_tok.shape[0], device=img_tok.device)
    return (F.cross_entropy(scale * i2t, labels) + F.cross_entropy(scale * t2i.T, labels)) / 2


def train_backbone(backbone: Backbone, items: list[CaptionedImage], images_dir: Path, cfg: TrainConfig,
                   ckpt_path: Path, resume: bool, progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Contrastive (CLIP) training of a backbone from scratch on (image, random caption) pairs."""
    model = backbone.model
    pixels = torch.from_numpy(load_pixels(items, images_dir, backbone.image_size, cfg.workers, progress))
    captions = [it.captions for it in items]
    steps_per_epoch = max(1, len(items) // cfg.clip_batch)
    total = steps_per_epoch * max(1, cfg.clip_epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.1)
    sched = _schedule(opt, "cosine", total, warmup=min(200, total // 10))
    loss_fn = ClipLoss()
    start_epoch, history = 0, []
    if resume and ckpt_path.is_file():
        ck = _load_checkpoint(ckpt_path, model, opt, sched)
        start_epoch, history = ck["epoch"], ck["history"]
        log(f"resumed backbone training after epoch {start_epoch}")
    t_start = time.perf_counter()
    deadline = t_start + cfg.clip_minutes * 60 if cfg.clip_minutes else None
    for epoch in range(start_epoch, cfg.clip_epochs):
        model.train()
        perm = torch.randperm(len(items))
        seen, losses = 0, []
        bar = tqdm(range(steps_per_epoch), disable=not progress, desc=f"clip {epoch + 1}/{cfg.clip_epochs}")
        t0 = time.perf_counter()
        for step in bar:
            idx = perm[step * cfg.clip_batch:(step + 1) * cfg.clip_batch]
            texts = [random.choice(captions[i]) for i in idx.tolist()]
            x = backbone.pixels(pixels[idx])
            ids = backbone.tokenize(texts)
            imf = backbone.image_features(x)
            txf = backbone.text_features(ids)
            scale = model.logit_scale.exp()
            loss = loss_fn(imf.globals, txf.globals, scale)
            if cfg.token_loss > 0:
                loss = loss + cfg.token_loss * filip_loss(imf.tokens, txf.tokens, txf.mask, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            seen += len(idx)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}", ex_s=f"{seen / (time.perf_counter() - t0):.0f}")
            if deadline and time.perf_counter() > deadline:
                break
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                        "examples_per_s": seen / (time.perf_counter() - t0)})
        log(f"clip epoch {epoch + 1}: loss {history[-1]['loss']:.3f}, {history[-1]['examples_per_s']:.0f} ex/s")
        _save_checkpoint(ckpt_path, model, opt, sched, epoch=epoch + 1, history=history)
        if deadline and time.perf_counter() > deadline:
            log("backbone time budget reached")
            break
    model.eval()
    _round_to_fp16(backbone)
    return {"epochs": len(history), "history": history, "seconds": round(time.perf_counter() - t_start, 1)}


@dataclass
class Trunk:
    """Hidden states at the input of the unfrozen blocks, computed once (the frozen part of both towers)."""

    image_ids: list[str]
    img: torch.Tensor  # [Ni, M+1, width] fp16
    txt: torch.Tensor  # [Nt, n, width] fp16
    txt_ids: torch.Tensor  # [Nt, n] token ids, cut at the dataset's last EOT
    txt_img: torch.Tensor  # [Nt]
    texts: list[str]


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
    return Trunk([it.image_id for it in items], img, txt, ids.cpu(), txt_img, texts)


def _head_batch(backbone: Backbone, trunk: Trunk, img: torch.Tensor, txt: torch.Tensor, start: int
                ) -> tuple[torch.Tensor, ...]:
    dev = backbone.device
    imf = backbone.image_head(trunk.img[img].to(dev).float(), start)
    txf = backbone.text_head(trunk.txt[txt].to(dev).float(), trunk.txt_ids[txt].to(dev), start)
    return imf.tokens, imf.globals, txf.tokens, txf.mask, txf.globals


@torch.inference_mode()
def features_from_trunk(backbone: Backbone, trunk: Trunk, start: int, batch: int = 256) -> Features:
    """Run the (fine-tuned) heads over a whole split: the Features evaluation expects."""
    width = backbone.context_length - 2
    n_img, n_txt = len(trunk.image_ids), len(trunk.texts)
    it_, ig, tt, tm, tg = [], [], [], [], []
    for lo in range(0, n_img, batch):
        imf = backbone.image_head(trunk.img[lo:lo + batch].to(backbone.device).float(), start)
        it_.append(imf.tokens.cpu().half())
        ig.append(imf.globals.cpu())
    for lo in range(0, n_txt, batch):
        txf = backbone.text_head(trunk.txt[lo:lo + batch].to(backbone.device).float(),
                                 trunk.txt_ids[lo:lo + batch].to(backbone.device), start)
        tok, mask = pad_words(txf.tokens.cpu().half(), txf.mask.cpu(), width)
        tt.append(tok)
        tm.append(mask)
        tg.append(txf.globals.cpu())
    return Features(trunk.image_ids, torch.cat(ig), torch.cat(it_), trunk.txt_img, torch.cat(tg), torch.cat(tt),
                    torch.cat(tm), trunk.texts)


def unfreeze_last(backbone: Backbone, n: int) -> list[torch.nn.Parameter]:
    """Freeze the backbone except the last `n` blocks of both towers and their output norms/projections."""
    m = backbone.model
    if not 0 < n <= backbone.depth:
        raise ValueError(f"unfreeze_blocks must be between 1 and {backbone.depth} for {backbone.name}")
    for p in m.parameters():
        p.requires_grad_(False)
    parts: list[Any] = [*m.visual.transformer.resblocks[-n:], m.visual.ln_post, *m.transformer.resblocks[-n:],
                        m.ln_final]
    params = [p for part in parts for p in part.parameters()]
    for extra in (m.visual.proj, m.text_projection):
        if isinstance(extra, torch.nn.Parameter):
            params.append(extra)
        elif isinstance(extra, torch.nn.Module):
            params += list(extra.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def train_matcher(matcher: Matcher, train_f: Features | Trunk, val_f: Features | Trunk | None, cfg: TrainConfig,
                  ckpt_path: Path, resume: bool, device: torch.device, progress: bool = True, log: Any = print,
                  backbone: Backbone | None = None) -> dict[str, Any]:
    """Hardest-negative triplet training; keeps the best validation rSum.

    With `Trunk` inputs (cfg.unfreeze_blocks > 0) the backbone's last blocks run, and train, in every step;
    otherwise the matcher reads frozen cached features.
    """
    matcher.to(device)
    start_block = 0
    trainable: torch.nn.Module = matcher
    groups: list[dict[str, Any]] = [{"params": [p for p in matcher.parameters() if p.requires_grad]}]
    if isinstance(train_f, Trunk):
        assert backbone is not None
        start_block = backbone.depth - cfg.unfreeze_blocks
        groups.append({"params": unfreeze_last(backbone, cfg.unfreeze_blocks), "lr": cfg.lr * cfg.backbone_lr_scale})
        trainable = torch.nn.ModuleDict({"matcher": matcher, "backbone": backbone.model})

    def batch(img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if isinstance(train_f, Trunk):
            return _head_batch(backbone, train_f, img, txt, start_block)  # type: ignore[arg-type]
        return (train_f.img_tok[img].to(device), train_f.img_glob[img].to(device), train_f.txt_tok[txt].to(device),
                train_f.txt_mask[txt].to(device), train_f.txt_glob[txt].to(device))

    def validation() -> Features | None:
        if isinstance(val_f, Trunk):
            backbone.model.eval()  # type: ignore[union-attr]
            return features_from_trunk(backbone, val_f, start_block)  # type: ignore[arg-type]
        return val_f

    # one caption per image per batch (its other captions would be false negatives)
    caps_of: list[list[int]] = [[] for _ in train_f.image_ids]
    for t, i in enumerate(train_f.txt_img.tolist()):
        caps_of[i].append(t)
    usable = torch.tensor([i for i, c in enumerate(caps_of) if c])
    steps = max(1, len(usable) // cfg.batch_size)
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _schedule(opt, cfg.schedule, steps * cfg.epochs)
    start_epoch, history, best = 0, [], {"rsum": -1.0, "epoch": 0, "state": None, "metrics": None}
    if resume and ckpt_path.is_file():
        ck = _load_checkpoint(ckpt_path, trainable, opt, sched)
        start_epoch, history, best = ck["epoch"], ck["history"], ck["best"]
        log(f"resumed matcher training after epoch {start_epoch}")
    t_start = time.perf_counter()
    deadline = t_start + cfg.minutes * 60 if cfg.minutes else None
    for epoch in range(start_epoch, cfg.epochs):
        trainable.train()
        hardest = epoch >= cfg.warmup_epochs
        perm = usable[torch.randperm(len(usable))]
        losses, seen, t0 = [], 0, time.perf_counter()
        bar = tqdm(range(steps), disable=not progress, desc=f"matcher {epoch + 1}/{cfg.epochs}")
        for step in bar:
            img = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            txt = torch.tensor([random.choice(caps_of[i]) for i in img.tolist()])
            img_tok, img_glob, txt_tok, txt_mask, txt_glob = batch(img, txt)
            pi = matcher.prepare_images(img_tok, img_glob)
            pt = matcher.prepare_texts(txt_tok, txt_mask, txt_glob)
            fused, _, patch = matcher.score_matrices(pi, pt)
            loss = triplet_loss(fused, cfg.margin, hardest=hardest)
            if cfg.patch_loss > 0:  # trains the fine-grained part at full strength, whatever the fusion share
                loss = loss + cfg.patch_loss * triplet_loss(patch, cfg.margin, hardest=hardest)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
            seen += len(img)
            bar.set_postfix(loss=f"{loss.item():.3f}", ex_s=f"{seen / (time.perf_counter() - t0):.0f}")
            if deadline and time.perf_counter() > deadline:
                break
        entry: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "hardest": hardest,
                                 "examples_per_s": round(seen / (time.perf_counter() - t0), 1)}
        val_now = validation()
        if val_now is not None:
            res = evaluate(matcher, val_now, cfg.val_candidates, ("two_stage",), device)["two_stage"]
            entry["val"] = res
            if res["rsum"] > best["rsum"]:
                best = {"rsum": res["rsum"], "epoch": epoch + 1, "metrics": res,
                        "state": copy.deepcopy(trainable.state_dict())}
            log(f"matcher epoch {epoch + 1}: loss {entry['loss']:.3f}, val two-stage rSum {res['rsum']:.1f} "
                f"(best {best['rsum']:.1f} @ {best['epoch']})")
        else:
            best = {"rsum": 0.0, "epoch": epoch + 1, "metrics": None, "state": copy.deepcopy(trainable.state_dict())}
            log(f"matcher epoch {epoch + 1}: loss {entry['loss']:.3f}")
        history.append(entry)
        _save_checkpoint(ckpt_path, trainable, opt, sched, epoch=epoch + 1, history=history, best=best)
        if deadline and time.perf_counter() > deadline:
            log("matcher time budget reached")
            break
    if best["state"] is not None:
        trainable.load_state_dict(best["state"])
    trainable.eval()
    if backbone is not None and isinstance(train_f, Trunk):
        for p in backbone.model.parameters():
            p.requires_grad_(False)
        _round_to_fp16(backbone)
    return {"epochs": len(history), "history": history, "best_epoch": best["epoch"], "best_val": best["metrics"],
            "seconds": round(time.perf_counter() - t_start, 1)}


@torch.inference_mode()
def tune_fusion(matcher: Matcher, val_f: Features, device: torch.device, grid: int = 41) -> dict[str, Any]:
    """Choose the patch share w that maximises validation rSum of the fused ranking (never the test split)."""
    from .evaluate import prepare, ranks_from_scores, recall

    p = prepare(matcher, val_f, device)
    g_rows, p_rows = [], []
    for lo in range(0, len(val_f.image_ids), 128):
        idx = torch.arange(lo, min(lo + 128, len(val_f.image_ids)), device=p.img.patches.device)
        _, g, s = matcher.score_matrices(type(p.img)(p.img.patches[idx], p.img.globals[idx]), p.txt)
        g_rows.append(g.cpu())
        p_rows.append(s.cpu())
    g, s = torch.cat(g_rows), torch.cat(p_rows)
    trials = []
    for w in np.linspace(0.0, 1.0, grid).tolist():
        r = recall(*ranks_from_scores((1 - w) * g + w * s, val_f.txt_img))
        trials.append({"share": round(w, 4), "rsum": r["rsum"]})
    best = max(trials, key=lambda t: (t["rsum"], -t["share"]))
    before = float(torch.sigmoid(matcher.fusion_mix))
    matcher.set_patch_share(best["share"])
    return {"learned_share": round(before, 4), "chosen_share": best["share"], "val_rsum": best["rsum"],
            "global_only_val_rsum": trials[0]["rsum"], "trials": trials}


def matcher_config_for(backbone: Backbone, overrides: dict[str, Any]) -> MatcherConfig:
    grid = backbone.model.visual.grid_size
    m = grid[0] * grid[1]
    base = MatcherConfig(dim=backbone.embed_dim, num_patches=m, max_words=backbone.context_length - 2,
                         top_k=min(16, m))
    return MatcherConfig.from_dict({**asdict(base), **overrides})


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
    if from_scratch and cfg.clip_epochs > 0 and not keep_backbone:
        report["backbone"] = train_backbone(backbone, train_items, images_dir, cfg, work / "backbone.ckpt", resume,
                                            progress, log)
    train_f: Features | Trunk
    val_f: Features | Trunk | None
    if cfg.unfreeze_blocks > 0:  # the heads change while training: cache the frozen trunk instead of features
        stop = backbone.depth - cfg.unfreeze_blocks
        train_f = trunk_features(backbone, train_items, images_dir, stop, cfg.workers, progress)
        val_f = trunk_features(backbone, val_items, images_dir, stop, cfg.workers, progress) if val_items else None
    else:
        cache = work / "features"
        train_f = cached_extract(backbone, train_items, images_dir, cache, workers=cfg.workers, progress=progress)
        val_f = cached_extract(backbone, val_items, images_dir, cache, workers=cfg.workers,
                               progress=progress) if val_items else None
    seed_everything(cfg.seed + 1)
    matcher = Matcher(matcher_config_for(backbone, cfg.matcher))
    report["matcher"] = train_matcher(matcher, train_f, val_f, cfg, work / "matcher.ckpt", resume, backbone.device,
                                      progress, log, backbone=backbone)
    if isinstance(val_f, Trunk):
        val_f = features_from_trunk(backbone, val_f, backbone.depth - cfg.unfreeze_blocks)
    if val_f is not None and cfg.tune_fusion:
        report["fusion"] = tune_fusion(matcher, val_f, backbone.device)
        log(f"fusion patch share {report['fusion']['learned_share']} → {report['fusion']['chosen_share']} "
            f"(val rSum {report['fusion']['global_only_val_rsum']} global-only, {report['fusion']['val_rsum']} fused)")
    if val_f is not None:
        final = evaluate(matcher, val_f, cfg.val_candidates, ("global", "two_stage"), backbone.device)
        report["val"] = final
        log(format_table(final))
    save_bundle(out, backbone, matcher, include_backbone=from_scratch or cfg.unfreeze_blocks > 0,
                extra={"training": report})
    (out / "training_log.json").write_text(json.dumps(report, indent=2, default=str))
    return report
