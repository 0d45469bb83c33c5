"""Fine-grained patch–word matcher: MGAN's similarity interaction with LDA aggregation.

See DESIGN.md "Matcher" and docs/evaluation.md for the measured choices. One module
serves three callers with the same maths: the service (one query against k
candidates), evaluation (all pairs, chunked) and training (all pairs of a batch,
or each query against its mined candidates). Everything is batched: there is no
Python loop over candidates, patches or words.

What differs from a literal reading of MGAN, and why (each measured on validation):

* Every softmax of eqs. 7–9 has a learnable inverse temperature. Cosines between
  tokens spread over a few tenths, so a softmax over raw cosines is nearly uniform
  and the interaction degenerates into mean pooling.
* MGAN's Linear₁₋₃ act on positions (the k-th selected patch, the l-th word). The
  selected patches are sorted indices that differ per image, so a weight "for slot
  k" means nothing; here the layer between the two softmaxes is shared by every
  position (`n·softmax(τ·c)` scaled by the outer temperature), which is order-free
  and still lets training choose how sharp each attention is. `slot_linear` keeps
  the positional layers for the ablation.
* The selector's perturbation noise is relative to the spread of the image's own
  selector scores, so training and inference pick the same patches, and a loss
  (`selector_loss`) trains its scores towards the patches the words attend to;
  `top_k=0` keeps every patch.
* LDA projects up (hidden ≥ d) and mixes two length-invariant aggregations of the
  word scores: the mean, and a sum weighted by learned word importances that sum
  to one. A plain sum makes the score grow with the caption's length.
* MGAN's region level (`views`) has no detector here: its views pool the prepared
  patch tokens, not bottom-up regions (see `image_views`).
* `interaction: "camp"` replaces eqs. 7–10 with CAMP's gated message passing
  (training/model/camp.py); its logit is calibrated on validation before it is fused.

Longer than the 350 lines the project aims for: `Matcher` is one nn.Module whose preparation, interaction,
fusion and calibration share its parameters. Its building blocks (layers.py), options (matcher_config.py)
and tensor bundles (prepared.py) live beside it.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

from .camp import CrossModalGate
from .layers import LDA, Adapter, PerturbedTopK, Refiner, masked_softmax
from .matcher_config import (
    DIRECTIONS,
    KINDS,
    PREPARATION_MODULES,
    PREPARATION_OPTIONS,
    MatcherConfig,
)
from .prepared import Interaction, PreparedImages, PreparedTexts
from .tokens import centre_tokens, pad_words

# the names callers import from here: the matcher, its options and its tensor bundles
__all__ = ["DIRECTIONS", "KINDS", "LDA", "Interaction", "Matcher", "MatcherConfig", "PreparedImages", "PreparedTexts"]


class Matcher(nn.Module):
    def __init__(self, config: MatcherConfig) -> None:
        super().__init__()
        c = self.config = config
        k = c.kept_patches
        # MLP on [patch; global], its first layer split in two so the global half is
        # computed once per image instead of once per patch (same function, half the FLOPs).
        if c.top_k:
            self.sel_patch = nn.Linear(c.dim, c.selector_hidden)
            self.sel_global = nn.Linear(c.dim, c.selector_hidden, bias=False)
            self.sel_out = nn.Linear(c.selector_hidden, 1)
        self.patch_refiner = Refiner(c.dim) if c.patch_context else None
        self.word_refiner = Refiner(c.dim) if c.word_context else None
        self.patch_pos = nn.Parameter(torch.zeros(c.num_patches, c.dim)) if c.patch_position else None
        self.patch_adapter = Adapter(c.dim, c.adapter_hidden) if c.adapters and c.patch_adapter else None
        self.word_adapter = Adapter(c.dim, c.adapter_hidden) if c.adapters else None
        if c.slot_linear:
            self.lin1 = nn.Linear(c.max_words, c.max_words)  # over the words of one patch row
            self.lin2 = nn.Linear(k, k)  # over the patch scores
            self.lin3 = nn.Linear(k, k)  # over the patches of one word column
        # log inverse temperatures: inner/outer softmax of eq. 7 (rows), eq. 8 (patch scores), eq. 9 (columns)
        inner = math.log(c.temperature)
        self.log_temp = nn.Parameter(torch.tensor([inner, 0.0, inner, 0.0, inner, 0.0]),
                                     requires_grad=c.learn_temperature)
        self.importance: nn.Linear | None = None
        if c.aggregation == "weighted":  # word importance for LDA's sum branch; starts as the plain mean
            self.importance = nn.Linear(c.dim, 1)
            nn.init.zeros_(self.importance.weight)
            nn.init.zeros_(self.importance.bias)
        self.lda = LDA(c.dim, c.lda_hidden, c.max_words, 3 if c.softmin else 2)
        self.log_min_temp = nn.Parameter(torch.tensor(math.log(c.temperature))) if c.softmin else None
        self.relevance_boundary = nn.Parameter(torch.zeros(())) if c.relevance == "uarda" else None
        self.view_attn: nn.Linear | None = None
        self.region_mix: nn.Parameter | None = None
        if c.views:  # ρ of fine = patch + ρ·region: trained, then set on validation (calibrate.tune)
            # one learned query per view (a hidden layer here would cost more per candidate than the interaction)
            self.view_attn = nn.Linear(c.dim, c.views)
            self.region_mix = nn.Parameter(torch.tensor(1.0))
        self.camp = CrossModalGate(c.dim, c.camp_hidden, c.temperature) if c.interaction == "camp" else None
        if self.camp is not None:  # the logit's logistic calibration per direction, fitted on validation
            self.register_buffer("camp_calibration", torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
        self.fusion_mix = nn.Parameter(torch.tensor(math.log(c.fusion_share / (1 - c.fusion_share))),
                                       requires_grad=c.fusion == "learned")
        # set on validation after training (see training/calibrate.py): per direction, the patch share and
        # the logistic calibration (scale, bias) of the fused, global and fine scores
        self.register_buffer("share", torch.full((2,), c.fusion_share))
        self.register_buffer("calibration", torch.tensor([[1.0, 0.0]] * 3).repeat(2, 1, 1))  # [dir, kind, 2]
        self.register_buffer("calibrated", torch.tensor(False))

    # ----------------------------------------------------------- per side
    def selector_scores(self, patches: torch.Tensor, globals_: torch.Tensor) -> torch.Tensor:
        """[B, M, d] patches (as `select` gets them) → [B, M]: the selector's score of each patch (MGAN eq. 5)."""
        h = self.sel_patch(patches) + self.sel_global(globals_)[:, None, :]
        return self.sel_out(F.gelu(h)).squeeze(-1)

    def select(self, patches: torch.Tensor, globals_: torch.Tensor) -> torch.Tensor:
        """[B, M, d] → [B, K, d]: hard top-K at inference, perturbed (differentiable) in training."""
        if not self.config.top_k:
            return patches
        b, m, d = patches.shape
        scores = self.selector_scores(patches, globals_)  # [B, M]
        k = self.config.top_k
        if self.training and torch.is_grad_enabled():
            sigma = self.config.sigma * scores.detach().std(dim=-1, keepdim=True).clamp(min=1e-4)
            ind = PerturbedTopK.apply(scores, k, self.config.num_samples, sigma)
            return ind @ patches
        idx = torch.sort(torch.topk(scores, k, dim=-1).indices, dim=-1).values
        return torch.gather(patches, 1, idx[..., None].expand(b, k, d))

    def prepare_images(self, patches: torch.Tensor, globals_: torch.Tensor) -> PreparedImages:
        sel = self.select(self._before_selection(patches), globals_.float())
        sel = self._after_selection(sel)
        views = self.image_views(sel)[0] if self.view_attn is not None else None
        return PreparedImages(sel, globals_.float(), views)

    def selector_loss(self, patches: torch.Tensor, globals_: torch.Tensor, words: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """Images with their positive captions' prepared words → KL divergence from where those words attend
        (eq. 9 over every patch, averaged over the words; no gradient through the target) to the selector's
        softmax over the M patches. Through the perturbed top-k alone the selector learns from the noise
        it is trained with; this tells it directly which patches the words need (MGAN's selector, warm-started
        and held by the interaction's own attention). Its gradient also reaches the steps before the selector
        (patch positions, patch context), which feed the selector as they feed the interaction; the target's
        eq. 9 runs over all M patches, so it is sharper than the interaction's over the K kept ones."""
        x = self._before_selection(patches)
        scores = self.selector_scores(x, globals_.float())
        with torch.no_grad():
            full = self._after_selection(x)
            att = self._sharpen(torch.einsum("bmd,bld->blm", full, words), 2, -1, None, x.shape[1])
            m = mask.to(att.dtype)[..., None]
            target = (att * m).sum(1) / m.sum(1).clamp(min=1)
        return (target * (target.clamp(min=1e-12).log() - F.log_softmax(scores, dim=-1))).sum(-1).mean()

    def _before_selection(self, patches: torch.Tensor) -> torch.Tensor:
        """The image side's per-patch steps that come before the selector: centring, positions, context."""
        patches = patches.float()
        if self.config.centre:
            patches = centre_tokens(patches)
        if self.patch_pos is not None:
            if patches.shape[1] != self.patch_pos.shape[0]:
                raise ValueError(f"{patches.shape[1]} patches per image, but the matcher was built for "
                                 f"{self.patch_pos.shape[0]}")
            patches = patches + self.patch_pos
        if self.patch_refiner is not None:
            patches = self.patch_refiner(patches)
        return patches

    def _after_selection(self, patches: torch.Tensor) -> torch.Tensor:
        """The image side's step after the selector: the patch adapter, or a plain normalisation."""
        return self.patch_adapter(patches) if self.patch_adapter is not None else F.normalize(patches, dim=-1)

    def image_views(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepared patches [B, K, d] → (view vectors [B, V, d] normalised, their attention over the patches
        [B, V, K]): MGAN's multi-view summarisation F_mvs (eq. 3), each view an attention pooling of the image's
        tokens with its own learned query, as in CAMERA (V·K·d per image: cheap enough to run per candidate)."""
        assert self.view_attn is not None
        att = torch.softmax(self.view_attn(patches).transpose(-1, -2), dim=-1)
        return F.normalize(att @ patches, dim=-1), att

    def views_of(self, img: PreparedImages) -> torch.Tensor:
        return img.views if img.views is not None else self.image_views(img.patches)[0]

    @staticmethod
    def text_vectors(words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The region level's caption vector t̃: the mean of its (contextualised, adapted) words, normalised."""
        m = mask.to(words.dtype)[..., None]
        return F.normalize((words * m).sum(-2), dim=-1)

    def region_scores(self, views: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        """S_region = max_v cos(ṽ_v, t̃) (MGAN eq. 4) for aligned pairs: views [N, V, d] (or [1, V, d]),
        caption vectors [N, d] (or [1, d]) → [N]."""
        return torch.einsum("nvd,nd->nv", views, texts).max(dim=-1).values

    def region_term(self, img: PreparedImages, txt: PreparedTexts) -> torch.Tensor | None:
        """ρ·S_region of aligned pairs (a side with one item is paired with every item of the other), the part
        of the fine score (patch + ρ·region) that the views add; None without views."""
        if self.region_mix is None:
            return None
        return self.region_mix * self.region_scores(self.views_of(img), self.text_vectors(txt.words, txt.mask))

    def prepare_texts(self, words: torch.Tensor, mask: torch.Tensor, globals_: torch.Tensor) -> PreparedTexts:
        words, mask = pad_words(words.float(), mask.bool(), self.config.max_words)
        # the work runs over the longest caption here, not the full context (same values: padding is masked)
        n = max(1, int(mask.sum(dim=1).max())) if mask.shape[0] else 1
        words, mask = words[:, :n], mask[:, :n]
        if self.config.centre:
            words = centre_tokens(words, mask)
        if self.word_refiner is not None:
            words = self.word_refiner(words, mask)
        if self.word_adapter is not None:
            words = self.word_adapter(words)
        return self.texts_from_words(words, mask, globals_, width=self.config.max_words)

    def texts_from_words(self, words: torch.Tensor, mask: torch.Tensor, globals_: torch.Tensor | None = None,
                         lda: torch.Tensor | None = None, width: int | None = None) -> PreparedTexts:
        """Prepared (refined, adapted) words → PreparedTexts. Given `lda` (stored at index time) it is used as
        is; the word importances are recomputed (one dot product per word, and they may be retrained).
        `width` pads to a fixed number of positions (sets of captions that are concatenated later)."""
        mask = mask.bool()
        words = words.float() * mask[..., None]
        if width is not None:
            words, mask = pad_words(words, mask, width)
        logits = self.importance(words).squeeze(-1) if self.importance is not None else torch.zeros_like(mask, dtype=
                                                                                                        words.dtype)
        importance = masked_softmax(logits, mask)
        lda = self.lda(words, mask) if lda is None else lda.to(words.dtype)
        if globals_ is None:  # the global term comes from the store's scores
            globals_ = words.new_zeros(words.shape[0], self.config.dim)
        return PreparedTexts(words, mask, globals_.float(), lda, importance)

    @property
    def text_extras(self) -> int:
        """Per-caption values stored beside its prepared words: the LDA weights."""
        return 3 if self.config.softmin else 2

    def preparation_fingerprint(self) -> str:
        """Identifies what `prepare_images`/`prepare_texts` compute: the options and the weights that shape them.
        A token bank prepared under another fingerprint must be re-prepared before this matcher serves it."""
        h = hashlib.sha256(json.dumps({k: getattr(self.config, k) for k in PREPARATION_OPTIONS},
                                      sort_keys=True).encode())
        for name, t in sorted(self.state_dict().items()):
            if name.split(".")[0] in PREPARATION_MODULES:
                h.update(name.encode())
                h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    # -------------------------------------------------------- interaction
    def _attend(self, c: torch.Tensor, mask: torch.Tensor | None, which: int) -> torch.Tensor:
        """MGAN's positional form (slot_linear): softmax(Linear(softmax(c))) over the last dim."""
        t_in, t_out = self.log_temp[2 * which: 2 * which + 2].exp()
        if mask is None:
            mask = torch.ones_like(c, dtype=torch.bool)
        inner = masked_softmax(t_in * c, mask)
        lin = (self.lin1, self.lin2, self.lin3)[which]  # beyond this batch's width: zero inputs, cut outputs
        width = inner.shape[-1]
        return masked_softmax(t_out * lin(F.pad(inner, (0, lin.in_features - width)))[..., :width], mask)

    def _sharpen(self, c: torch.Tensor, which: int, dim: int, bias: torch.Tensor | None, n: torch.Tensor | int
                 ) -> torch.Tensor:
        """softmax(τ_out · n · softmax(τ_in · c)) along `dim` (see the module docstring); `bias` is 0 on real
        positions and −10⁴ on padding, whose weights then underflow to exactly 0."""
        x = (self.log_temp[2 * which + 1].exp() * n) * self.inner_attention(c, which, dim, bias)
        return torch.softmax(x if bias is None else x + bias, dim)

    def inner_attention(self, c: torch.Tensor, which: int, dim: int, bias: torch.Tensor | None) -> torch.Tensor:
        """softmax(τ_in · c) along `dim`: `_sharpen`'s first softmax, before its learned sharpening (what an
        explanation reads of eq. 7, training/model/explain.py `picked_by`); `bias` as in `_sharpen`."""
        x = self.log_temp[2 * which].exp() * c
        return torch.softmax(x if bias is None else x + bias, dim)

    def interact(self, sim: torch.Tensor, txt_mask: torch.Tensor, lda: torch.Tensor, importance: torch.Tensor
                 ) -> Interaction:
        """sim [..., L, K] (words × patches) with the word mask, LDA weights and word importances → S_patch.

        Words × patches keeps both attentions fast on a CPU: eq. 7's softmax over a caption's few words runs
        across the contiguous patch axis, eq. 9's over the patches is contiguous itself (a softmax along a
        short contiguous axis of 12 words is several times slower)."""
        if self.config.slot_linear:
            return self._interact_slots(sim, txt_mask, lda, importance)
        m = txt_mask.to(sim.dtype)[..., None]  # [..., L, 1]
        bias = (m - 1) * 1e4
        k = sim.shape[-1]
        gate = self.relevance_gate(sim)
        # eq. 7: each patch's attention over the caption's words; eq. 8: attention over the patch scores
        row = self._sharpen(sim, 0, -2, bias, m.sum(-2, keepdim=True))
        s_p = ((row if gate is None else row * gate) * sim).sum(-2)  # [..., K]
        s_w2p = (self._sharpen(s_p, 1, -1, None, k) * s_p).sum(-1)
        # eq. 9: each word's attention over the patches (UARDA: only over the relevant ones)
        att = self._sharpen(sim, 2, -1, None, k)
        if gate is not None:
            att = att * gate
        s_w = (att * sim).sum(-1) * txt_mask  # [..., L]
        return self._aggregate(s_w2p, s_w, att, txt_mask, lda, importance)

    def pair_interaction(self, sim: torch.Tensor, patches: torch.Tensor, words: torch.Tensor, txt_mask: torch.Tensor,
                         lda: torch.Tensor, importance: torch.Tensor) -> Interaction:
        """The configured interaction over pairs: sim [..., L, K] of patches [..., K, d] and words [..., L, d]
        (leading dims broadcast). Its `patch` is the raw fine score: S_patch, or CAMP's logit (see `fine_of`).

        For CAMP, `word_scores` are the words' gates (how much of its message each word took in) and
        `word_weights` their pooling weights: the explanation's shares, not additive parts of the logit."""
        if self.camp is None:
            return self.interact(sim, txt_mask, lda, importance)
        out = self.camp(patches, words, txt_mask, sim)
        return Interaction(out.logit, out.word_gate, out.word_attention, out.word_pool, torch.zeros_like(out.logit))

    def fine_of(self, raw: torch.Tensor, direction: str | None = None) -> torch.Tensor:
        """The interaction's raw score → the fine score that is fused with the global cosine: S_patch as it is;
        CAMP's logit through its logistic calibration for `direction` (σ(logit) without one, as in training), a
        probability on the cosine's scale instead of a logit of any scale."""
        if self.camp is None:
            return raw
        if direction is None:
            return torch.sigmoid(raw)
        a, b = self.camp_calibration[DIRECTIONS.index(direction)]
        return torch.sigmoid(a * raw + b)

    def relevance_gate(self, sim: torch.Tensor) -> torch.Tensor | None:
        """UARDA's relevance of each word–patch pair, σ(κ·(sim − b)) in [0, 1]; None without the option.

        Soft, so the boundary b is learned by the ranking losses and `relevance_loss`; at κ = 20 a pair 0.15
        below b already has a weight under 0.05."""
        if self.relevance_boundary is None:
            return None
        return torch.sigmoid(self.config.relevance_sharpness * (sim - self.relevance_boundary))

    def word_evidence(self, img: PreparedImages, txt: PreparedTexts) -> torch.Tensor:
        """Aligned pairs → each word's best cosine over the image's patches [N, L] (zero on padding): the
        similarity UARDA's boundary has to separate (is there any patch this word is about?)."""
        sim = torch.einsum("nkd,nld->nlk", img.patches, txt.words)
        return sim.max(dim=-1).values * txt.mask

    def _interact_slots(self, sim: torch.Tensor, txt_mask: torch.Tensor, lda: torch.Tensor,
                        importance: torch.Tensor) -> Interaction:
        cols = sim  # [..., L, K]
        rows = sim.transpose(-1, -2)  # [..., K, L]
        s_p = (self._attend(rows, txt_mask[..., None, :].expand_as(rows), 0) * rows).sum(-1)
        s_w2p = (self._attend(s_p, None, 1) * s_p).sum(-1)
        att = self._attend(cols, None, 2)
        s_w = (att * cols).sum(-1) * txt_mask
        return self._aggregate(s_w2p, s_w, att, txt_mask, lda, importance)

    def _aggregate(self, s_w2p: torch.Tensor, s_w: torch.Tensor, att: torch.Tensor, txt_mask: torch.Tensor,
                   lda: torch.Tensor, importance: torch.Tensor) -> Interaction:
        """LDA (replaces eq. 10): w_sum · Σ_l a_l s_w + w_mean · mean_l s_w (+ w_min · softmin_l s_w), written as
        one weight per word, so an explanation can show each word's share of the score."""
        m = txt_mask.to(s_w.dtype)
        n = m.sum(-1, keepdim=True).clamp(min=1)
        per = importance if self.config.aggregation == "weighted" else m
        weights = lda[..., 0:1] * per + lda[..., 1:2] * m / n
        if self.log_min_temp is not None:
            soft = masked_softmax(-self.log_min_temp.exp() * s_w, txt_mask.bool())
            weights = weights + lda[..., 2:3] * soft
        weights = weights * m
        s_p2w = (weights * s_w).sum(-1)
        return Interaction((s_w2p + s_p2w) / 2, s_w, att, weights, s_w2p)

    def mix(self, s_global: torch.Tensor, s_patch: torch.Tensor, direction: str | None = None) -> torch.Tensor:
        """(1−w)·global + w·patch: with `direction`, the share tuned for it; without, the trained share."""
        w = torch.sigmoid(self.fusion_mix) if direction is None else self.share[DIRECTIONS.index(direction)]
        return (1 - w) * s_global + w * s_patch

    def calibrate(self, score: torch.Tensor, direction: str, kind: str = "fused") -> torch.Tensor:
        """A score → the probability, fitted on validation, that the pair matches (see docs/api.md)."""
        a, b = self.calibration[DIRECTIONS.index(direction), KINDS.index(kind)]
        return torch.sigmoid(a * score + b)

    def score_pairs(self, img: PreparedImages, txt: PreparedTexts, s_global: torch.Tensor | None = None,
                    direction: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned pairs (image i, text i) → (fused score [N], fine score [N]).

        `s_global` lets a caller that already has the global cosines (Qdrant's scores) pass them in.
        The fused score is the uncalibrated mix; ranking by it equals ranking by its calibrated probability.
        A side with one item is paired with every item of the other (one query against its candidates):
        one matrix product, no copies of the query.
        """
        fused, fine, _ = self.pair_scores(img, txt, s_global, direction)
        return fused, fine

    def pair_scores(self, img: PreparedImages, txt: PreparedTexts, s_global: torch.Tensor | None = None,
                    direction: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`score_pairs` and the interaction's raw score (what CAMP's cross-entropy is computed on)."""
        ni, nt = img.patches.shape[0], txt.words.shape[0]
        if ni == 1 and nt > 1:
            sim = torch.einsum("kd,nld->nlk", img.patches[0], txt.words)
        elif nt == 1 and ni > 1:
            sim = torch.einsum("nkd,ld->nlk", img.patches, txt.words[0])
        else:
            sim = torch.einsum("nkd,nld->nlk", img.patches, txt.words)
        sim = sim.contiguous()  # the interaction's reductions assume words × patches in memory order
        raw = self.pair_interaction(sim, img.patches, txt.words, txt.mask, txt.lda, txt.importance).patch
        fine = self.fine_of(raw, direction)
        region = self.region_term(img, txt)
        if region is not None:
            fine = fine + region
        if s_global is None:
            s_global = (img.globals * txt.globals).sum(-1)
        return self.mix(s_global.to(fine.dtype), fine, direction), fine, raw

    def score_matrices(self, img: PreparedImages, txt: PreparedTexts, chunk: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """All pairs → (global, raw fine) score matrices [B_images, B_texts], in blocks of about `chunk` pairs
        over texts: small enough for the intermediates to stay in the CPU's caches (1000 × 1000 pairs of the
        tiny model: 6.7 s in blocks of 2048, 21.7 s in blocks of 65536, bench/bench_blocks.py); a GPU keeps
        blocks of 65536. `fine_of` maps the raw scores of a CAMP matcher for a direction."""
        if chunk is None:
            chunk = 2048 if img.patches.device.type == "cpu" else 65536
        bi, bt = img.patches.shape[0], txt.words.shape[0]
        views = self.views_of(img) if self.region_mix is not None else None
        if self.camp is not None:
            chunk = max(1, chunk // 16)  # CAMP's per-pair intermediates are several L×K blocks
        step = max(1, chunk // max(bi, 1))
        patches = []
        for lo in range(0, bt, step):
            t = txt.take(torch.arange(lo, min(lo + step, bt), device=txt.words.device)).trimmed()
            sim = torch.einsum("ikd,tld->itlk", img.patches, t.words)
            e = lambda x: x[None].expand(bi, *x.shape)  # noqa: E731
            patch = self.pair_interaction(sim, img.patches[:, None], t.words[None], e(t.mask), e(t.lda),
                                          e(t.importance)).patch
            if views is not None:
                region = torch.einsum("ivd,td->itv", views, self.text_vectors(t.words, t.mask)).max(dim=-1).values
                patch = patch + self.region_mix * region
            patches.append(patch)
        if not patches:
            return img.globals.new_zeros(bi, 0), img.globals.new_zeros(bi, 0)
        return img.globals @ txt.globals.T, torch.cat(patches, dim=1)

    def score_matrix(self, img: PreparedImages, txt: PreparedTexts, direction: str | None = None,
                     chunk: int | None = None) -> torch.Tensor:
        """All pairs → fused scores [B_images, B_texts] (the share of `direction`, or the trained one)."""
        g, p = self.score_matrices(img, txt, chunk)
        return self.mix(g, self.fine_of(p, direction), direction)

    def set_shares(self, t2i: float, i2t: float) -> None:
        """The patch share w per direction, e.g. as tuned on validation."""
        with torch.no_grad():
            self.share.copy_(torch.tensor([t2i, i2t], dtype=self.share.dtype))

    # ------------------------------------------------------ service calls
    def rerank(self, queries: PreparedTexts | PreparedImages, candidates: PreparedImages | PreparedTexts,
               owner: torch.Tensor | None = None, s_global: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The candidates of one or more queries, scored in one pass → (fused [N], fine [N]).

        Captions as queries rank image candidates (t2i), images rank caption candidates (i2t). Candidate i
        belongs to query owner[i]; with one query (owner None) it is paired with every candidate by broadcast,
        with no copies. `s_global`: the candidates' global cosines (Qdrant's scores), else from the globals.
        """
        t2i = isinstance(queries, PreparedTexts)
        q = queries if owner is None else queries.take(owner)
        img, txt = (candidates, q) if t2i else (q, candidates)
        return self.score_pairs(img, txt, s_global, "t2i" if t2i else "i2t")  # type: ignore[arg-type]
