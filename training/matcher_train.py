"""The matcher's training loop: each step, queries in both directions against their mined global top-k.

Every step draws `queries` images; each image's query caption (one of its own, at random)
ranks its mined top-k images (t2i), and the image ranks its mined top-k captions (i2t).
Those candidate lists are the hard neighbours the service will rerank, so the losses
(listwise softmax and MGAN's hardest-negative hinge, on the fused and on the patch score, and the match BCE
on the patch score) train exactly that ordering. Positives are every candidate the caption (or an equivalent
one) truly describes; with `skip_implied`, candidates the caption is only implied by are left out
(mining.Truth.implied). With the candidate pool (`candidate_pool`, by default the depth the service reranks)
each list is mined that deep and each step draws its hardest half and a random rest from it, so a score is
also trained on the deeper candidates it will be asked to rank.
Items are prepared once per step however many lists they appear in.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .calibrate import tune
from .evaluate import evaluate
from .features import Features
from .losses import hardest_bce_loss, list_triplet_loss, listwise_loss, relevance_loss
from .mining import Candidates, Truth, mine
from .model.backbone import Backbone
from .model.matcher import Matcher
from .model.tokens import pad_words
from .progress import progress_bar
from .run_state import load_checkpoint, lr_schedule, optimiser_step, save_checkpoint

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class FeatureSource(Protocol):
    """Where a step's token features come from: a frozen cache, or a trunk whose last blocks train."""

    image_ids: list[str]
    txt_img: torch.Tensor
    texts: list[str]

    def batch(self, img: torch.Tensor, txt: torch.Tensor) -> Batch:
        """(image tokens, image globals, word tokens, word mask, caption globals) of the given items."""
        ...

    def features(self) -> Features:
        """The whole split as evaluation reads it (the current weights)."""
        ...


@dataclass
class Frozen:
    f: Features
    device: torch.device

    @property
    def image_ids(self) -> list[str]:
        return self.f.image_ids

    @property
    def txt_img(self) -> torch.Tensor:
        return self.f.txt_img

    @property
    def texts(self) -> list[str]:
        return self.f.texts

    def batch(self, img: torch.Tensor, txt: torch.Tensor) -> Batch:
        f, d = self.f, self.device
        return (f.img_tok[img].to(d), f.img_glob[img].to(d), f.txt_tok[txt].to(d), f.txt_mask[txt].to(d),
                f.txt_glob[txt].to(d))

    def features(self) -> Features:
        return self.f


@dataclass
class Trunk:
    """Hidden states at the input of the unfrozen blocks, computed once (the frozen part of both towers)."""

    backbone: Backbone
    start: int  # first block that runs (and trains) in every step
    image_ids: list[str]
    img: torch.Tensor  # [Ni, M+1, width] fp16
    txt: torch.Tensor  # [Nt, n, width] fp16
    txt_ids: torch.Tensor  # [Nt, n] token ids, cut at the dataset's last EOT
    txt_img: torch.Tensor  # [Nt]
    texts: list[str]

    def batch(self, img: torch.Tensor, txt: torch.Tensor) -> Batch:
        b, dev = self.backbone, self.backbone.device
        imf = b.image_head(self.img[img].to(dev).float(), self.start)
        txf = b.text_head(self.txt[txt].to(dev).float(), self.txt_ids[txt].to(dev), self.start)
        return imf.tokens, imf.globals, txf.tokens, txf.mask, txf.globals

    @torch.inference_mode()
    def features(self, chunk: int = 256) -> Features:
        was_training = self.backbone.model.training
        self.backbone.model.eval()
        width = self.backbone.max_words
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("it", "ig", "tt", "tm", "tg")}
        for lo in range(0, len(self.image_ids), chunk):
            idx = torch.arange(lo, min(lo + chunk, len(self.image_ids)))
            tok, glob, *_ = self.batch(idx, idx[:0])
            parts["it"].append(tok.cpu().half())
            parts["ig"].append(glob.cpu())
        for lo in range(0, len(self.texts), chunk):
            idx = torch.arange(lo, min(lo + chunk, len(self.texts)))
            _, _, tok, mask, glob = self.batch(idx[:0], idx)
            tok, mask = pad_words(tok.cpu().half(), mask.cpu(), width)
            parts["tt"].append(tok)
            parts["tm"].append(mask)
            parts["tg"].append(glob.cpu())
        self.backbone.model.train(was_training)
        c = {k: torch.cat(v) for k, v in parts.items()}
        return Features(self.image_ids, c["ig"], c["it"], self.txt_img, c["tg"], c["tt"], c["tm"], self.texts)


@dataclass
class StepLosses:
    total: torch.Tensor
    parts: dict[str, float]


def matcher_step(matcher: Matcher, source: FeatureSource, images: torch.Tensor, captions: torch.Tensor,
                 t2i: Candidates, i2t: Candidates, cfg: Any, bce: MatchThreshold | None = None) -> StepLosses:
    """Losses of one step: `captions` rank their candidate images, `images` rank their candidate captions
    (`t2i` and `i2t` hold the rows of these queries, in their order)."""
    t2i_idx, t2i_pos = t2i.index, t2i.positive  # [Q, C]
    i2t_idx, i2t_pos = i2t.index, i2t.positive
    img_u, img_inv = torch.unique(torch.cat([images, t2i_idx.flatten()]), return_inverse=True)
    txt_u, txt_inv = torch.unique(torch.cat([captions, i2t_idx.flatten()]), return_inverse=True)
    img_tok, img_glob, txt_tok, txt_mask, txt_glob = source.batch(img_u, txt_u)
    pi = matcher.prepare_images(img_tok, img_glob)
    pt = matcher.prepare_texts(txt_tok, txt_mask, txt_glob).trimmed()
    q, c = captions.shape[0], t2i_idx.shape[1]
    dev = pi.patches.device
    # t2i pairs: query caption j (position j in txt_u order) with each candidate image
    cap_pos = txt_inv[:q].to(dev)
    t2i_img = img_inv[len(images):].view(q, c).to(dev)
    f_t2i, p_t2i, r_t2i = matcher.pair_scores(pi.take(t2i_img.flatten()), pt.take(cap_pos.repeat_interleave(c)))
    img_pos = img_inv[:len(images)].to(dev)
    i2t_txt = txt_inv[q:].view(len(images), -1).to(dev)
    k = i2t_txt.shape[1]
    f_i2t, p_i2t, r_i2t = matcher.pair_scores(pi.take(img_pos.repeat_interleave(k)), pt.take(i2t_txt.flatten()))
    t2i_pos, i2t_pos = t2i_pos.to(dev), i2t_pos.to(dev)
    valid_t, valid_i = ~t2i.unsure.to(dev), ~i2t.unsure.to(dev)  # all True unless skip_implied
    parts: dict[str, torch.Tensor] = {}
    for name, scores, pos, valid in (("t2i", f_t2i.view(q, c), t2i_pos, valid_t),
                                     ("i2t", f_i2t.view(len(images), k), i2t_pos, valid_i),
                                     ("t2i_patch", p_t2i.view(q, c), t2i_pos, valid_t),
                                     ("i2t_patch", p_i2t.view(len(images), k), i2t_pos, valid_i)):
        weight = cfg.patch_loss if name.endswith("_patch") else 1.0
        if weight <= 0:
            continue
        if name.endswith("_patch") and matcher.camp is not None:  # CAMP's own objective on its logits
            raw = (r_t2i if name.startswith("t2i") else r_i2t).view_as(scores)
            parts[f"bce_{name[:3]}"] = weight * hardest_bce_loss(raw, pos, valid)
            continue
        if cfg.listwise > 0:
            parts[f"listwise_{name}"] = weight * cfg.listwise * listwise_loss(scores, pos, valid, cfg.listwise_scale)
        if cfg.triplet > 0:
            parts[f"triplet_{name}"] = weight * cfg.triplet * list_triplet_loss(scores, pos, valid, cfg.margin) / q
        if name.endswith("_patch") and bce is not None:
            parts[f"bce_{name[:3]}"] = weight * cfg.patch_bce * bce.loss(scores, pos, valid, cfg.listwise_scale)
    if matcher.relevance_boundary is not None and cfg.relevance_loss > 0:
        pairs = ((pi.take(t2i_img.flatten()), pt.take(cap_pos.repeat_interleave(c)), t2i_pos, valid_t),
                 (pi.take(img_pos.repeat_interleave(k)), pt.take(i2t_txt.flatten()), i2t_pos, valid_i))
        parts["relevance"] = cfg.relevance_loss * sum(
            relevance_loss(matcher.word_evidence(im, tx), tx.mask, pos.flatten(), valid.flatten(),
                           matcher.relevance_boundary, cfg.relevance_margin) for im, tx, pos, valid in pairs) / 2
    if matcher.config.top_k and cfg.selector_loss > 0:  # each query image against its own query caption
        own = pt.take(cap_pos)
        parts["selector"] = cfg.selector_loss * matcher.selector_loss(
            img_tok[img_pos], img_glob[img_pos], own.words.detach(), own.mask)
    if matcher.view_attn is not None and cfg.view_diversity > 0:  # CAMERA's ‖AAᵀ − I‖²: views that differ
        att = matcher.image_views(pi.patches)[1]
        eye = torch.eye(att.shape[1], device=att.device, dtype=att.dtype)
        parts["view_diversity"] = cfg.view_diversity * ((att @ att.transpose(1, 2) - eye) ** 2).sum((1, 2)).mean()
    total = torch.stack(list(parts.values())).sum()
    return StepLosses(total, {k: float(v.detach()) for k, v in parts.items()})


class MatchThreshold(torch.nn.Module):
    """`patch_bce`: CAMP's hardest-negative BCE on the bounded word–patch score [Q, C], its logit
    scale · (score − t) with one learned threshold t, set to the first lists' mean valid score and trained
    from there. Ranking losses only ask that the ground truth come first, and the fine score learns to prefer
    captions that describe the whole image; this asks whether a pair matches at all, against one absolute t
    (a threshold that followed each batch's mean would be a ranking loss again), so a partly described true
    image is not pushed below false ones. It lives for training only: serving ranks, it does not threshold."""

    def __init__(self) -> None:
        super().__init__()
        self.threshold = torch.nn.Parameter(torch.zeros(()))
        self.register_buffer("started", torch.tensor(False))  # checkpointed with the threshold
        self._known = False  # `started` read once (a device sync), not on every step

    def loss(self, scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor, scale: float) -> torch.Tensor:
        if not self._known:
            if bool(self.started):
                self._known = True
            elif bool(valid.any()):
                with torch.no_grad():
                    self.threshold.fill_(float(scores.detach()[valid].mean()))
                    self.started.fill_(True)
                self._known = True
        return hardest_bce_loss(scale * (scores - self.threshold), positive, valid)


def train_matcher(matcher: Matcher, source: FeatureSource, val: FeatureSource | None, cfg: Any,
                  ckpt_path: Path, resume: bool, device: torch.device, *, extra_params: list[torch.nn.Parameter] | None
                  = None, extra_modules: dict[str, torch.nn.Module] | None = None, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train for cfg.steps (or cfg.minutes); validate every cfg.val_every steps; keep the best validation rSum."""
    matcher.to(device)
    bce = MatchThreshold().to(device) if cfg.patch_bce > 0 and matcher.camp is None else None
    modules = torch.nn.ModuleDict({"matcher": matcher, **({"match_threshold": bce} if bce else {}),
                                   **(extra_modules or {})})
    opt, params = _optimiser(matcher, extra_params, cfg, list(bce.parameters()) if bce else [])
    sched = lr_schedule(opt, cfg.schedule, cfg.steps, warmup=min(100, cfg.steps // 20))

    t2i, i2t, mined = _mine_start(source, cfg, pool_depth(cfg))
    caps_of: list[list[int]] = [[] for _ in source.image_ids]
    for t, i in enumerate(source.txt_img.tolist()):
        caps_of[i].append(t)
    usable = torch.tensor([i for i, cs in enumerate(caps_of) if cs], dtype=torch.long)

    step, history = 0, []
    best: dict[str, Any] = {"rsum": -1.0, "step": 0, "state": None, "metrics": None}
    if resume and ckpt_path.is_file():
        ck = _resume(ckpt_path, modules, opt, sched)
        step, history, best = ck["step"], ck["history"], ck["best"]
        log(f"resumed matcher training after step {step}")
    t_start = time.perf_counter()
    deadline = t_start + cfg.minutes * 60 if cfg.minutes else None
    perm, pos = usable[torch.randperm(len(usable))], 0
    window: list[dict[str, float]] = []
    bar = progress_bar(total=cfg.steps, initial=step, disable=not progress, desc="matcher")
    while step < cfg.steps:
        modules.train()
        if pos + cfg.queries > len(perm):
            perm, pos = usable[torch.randperm(len(usable))], 0
        images = perm[pos:pos + cfg.queries]
        pos += cfg.queries
        captions = torch.tensor([caps_of[i][np.random.randint(len(caps_of[i]))] for i in images.tolist()])
        out = matcher_step(matcher, source, images, captions, t2i.draw(captions, cfg.candidates),
                           i2t.draw(images, cfg.candidates), cfg, bce)
        optimiser_step(opt, sched, out.total, params, cfg.grad_clip)
        step += 1
        window.append({"loss": float(out.total.detach()), **out.parts})
        bar.update(1)
        bar.set_postfix(loss=f"{window[-1]['loss']:.3f}", refresh=False)
        over = deadline is not None and time.perf_counter() > deadline
        if step % cfg.val_every == 0 or step == cfg.steps or over:
            entry: dict[str, Any] = {"step": step, **{k: round(float(np.mean([w[k] for w in window])), 4)
                                                     for k in window[0]}}
            window = []
            best = _validate(matcher, modules, val, cfg, device, entry, best, log)
            history.append(entry)
            save_checkpoint(ckpt_path, modules, opt, sched, step=step, history=history, best=best)
        if over:
            log("matcher time budget reached")
            break
    bar.close()
    if best["state"] is not None:
        modules.load_state_dict(best["state"])
    modules.eval()
    return {"steps": step, "history": history, "best_step": best["step"], "best_val": best["metrics"],
            "mining": mined, "seconds": round(time.perf_counter() - t_start, 1)}


def _optimiser(matcher: Matcher, extra_params: list[torch.nn.Parameter] | None, cfg: Any,
               loss_params: list[torch.nn.Parameter] | None = None
               ) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """AdamW over the matcher (and the losses' own parameters), and the unfrozen backbone blocks at
    cfg.backbone_lr_scale of its rate."""
    groups: list[dict[str, Any]] = [{"params": [p for p in matcher.parameters() if p.requires_grad]
                                     + list(loss_params or [])}]
    if extra_params:
        groups.append({"params": extra_params, "lr": cfg.lr * cfg.backbone_lr_scale})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay), [p for g in groups for p in g["params"]]


def _resume(ckpt_path: Path, modules: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any) -> dict[str, Any]:
    """The checkpoint's state into this run, or an error that says which options to resume it with."""
    try:
        return load_checkpoint(ckpt_path, modules, opt, sched)
    except (RuntimeError, ValueError, KeyError) as e:  # other modules or parameter groups than this run's
        raise ValueError(
            f"cannot resume from {ckpt_path}: it was written by a run with other matcher options or training "
            "losses. Resume with the options it started with (a run begun before the match BCE and the "
            "candidate pool became defaults: add --patch-bce 0 --candidate-pool 0), or start afresh without "
            f"--resume. ({str(e).splitlines()[0]})") from e


def pool_depth(cfg: Any) -> int:
    """How deep each query's list is mined: `candidate_pool`, by default the depth the service reranks. A matcher
    trained on each query's top 16 alone never sees the deeper candidates it will rerank: CAMP's MLP logit ranked
    them at random, and the match BCE (`patch_bce`) needs them to set its threshold (docs/evaluation.md)."""
    if cfg.candidate_pool is not None:
        return max(cfg.candidates, cfg.candidate_pool)
    return max(cfg.candidates, cfg.calibrate_candidates)


def _mine_start(source: FeatureSource, cfg: Any, depth: int) -> tuple[Candidates, Candidates, dict[str, Any]]:
    """Each query's global top-`depth` at the start, with its positives (and unsure pairs), and what mining
    found; each step draws `cfg.candidates` of them (Candidates.draw)."""
    t_mine = time.perf_counter()
    start_f = source.features()
    truth = Truth(source.txt_img, source.texts)
    t2i, i2t = mine(start_f.img_glob, start_f.txt_glob, truth, depth, implied=cfg.skip_implied)
    mined = {"candidates": cfg.candidates, "pool": depth, "seconds": round(time.perf_counter() - t_mine, 1),
             "t2i_positives_per_query": round(float(t2i.positive.sum(1).float().mean()), 2),
             "i2t_positives_per_query": round(float(i2t.positive.sum(1).float().mean()), 2)}
    if cfg.skip_implied:
        mined |= {"t2i_unsure_per_query": round(float(t2i.unsure.sum(1).float().mean()), 2),
                  "i2t_unsure_per_query": round(float(i2t.unsure.sum(1).float().mean()), 2)}
    return t2i, i2t, mined


def _validate(matcher: Matcher, modules: torch.nn.Module, val: FeatureSource | None, cfg: Any,
              device: torch.device, entry: dict[str, Any], best: dict[str, Any], log: Callable[[str], None]
              ) -> dict[str, Any]:
    """One validation point: fusion tuned on validation, `entry` filled in, and the best state so far kept
    (without a validation split, the latest)."""
    step = entry["step"]
    if val is None:
        log(f"matcher step {step}: loss {entry['loss']:.3f}")
        return {"rsum": 0.0, "step": step, "metrics": None, "state": copy.deepcopy(modules.state_dict())}
    res = tune(matcher, val.features(), cfg.val_candidates, device)
    entry["val"] = res["val_two_stage"]
    entry["shares"] = res["shares"]
    if res["val_two_stage"]["rsum"] > best["rsum"]:
        best = {"rsum": res["val_two_stage"]["rsum"], "step": step, "metrics": res["val_two_stage"],
                "state": copy.deepcopy(modules.state_dict())}
    log(f"matcher step {step}: loss {entry['loss']:.3f}, val two-stage rSum {entry['val']['rsum']:.1f} "
        f"(best {best['rsum']:.1f} @ {best['step']}; global {res['val_global']['rsum']:.1f})")
    return best


def evaluate_val(matcher: Matcher, val: Features, candidates: int, device: torch.device) -> dict[str, Any]:
    return evaluate(matcher, val, candidates, ("global", "two_stage"), device)
