"""Fine-grained patch–word matcher (MGAN-style interaction with LDA aggregation).

See DESIGN.md "Matcher". One module serves three callers with the same maths:
the service (one query against k candidates), evaluation (all pairs, chunked)
and training (all pairs of a batch, with a differentiable patch selection).
Everything is batched: there is no Python loop over candidates, patches or words.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MatcherConfig:
    dim: int = 512
    num_patches: int = 49  # M of the backbone (grid²)
    max_words: int = 75  # context_length − 2: Linear₁ acts on this many word positions
    top_k: int = 16  # K patches kept by the selector
    selector_hidden: int = 64
    sigma: float = 0.05  # perturbed top-k noise
    num_samples: int = 100  # perturbed top-k samples
    adapters: bool = True
    adapter_hidden: int = 128
    lda_hidden: int = 64
    fusion: str = "learned"  # or "fixed"
    fusion_global: float = 0.6
    fusion_patch: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MatcherConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown matcher options {sorted(unknown)} (bundle from a newer finesearch?)")
        return cls(**d)


def masked_softmax(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the positions where mask is True; an all-masked row gives zeros, not NaN."""
    x = x.masked_fill(~mask, float("-inf"))
    out = torch.softmax(x, dim=dim)
    return torch.nan_to_num(out, nan=0.0) * mask


class PerturbedTopK(torch.autograd.Function):
    """Differentiable top-k (Berthet et al. 2020, as in TS2-Net): the mean of the hard
    top-k indicators of noisy scores, with the perturbed-optimizer gradient E[y·Zᵀ]/σ."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, k: int, num_samples: int, sigma: float) -> torch.Tensor:
        b, m = scores.shape
        noise = torch.randn(b, num_samples, m, device=scores.device, dtype=scores.dtype)
        idx = torch.topk(scores[:, None, :] + sigma * noise, k, dim=-1, sorted=False).indices
        idx = torch.sort(idx, dim=-1).values  # keep spatial order
        onehot = F.one_hot(idx, m).to(scores.dtype)  # [b, n, k, m]
        ctx.save_for_backward(onehot, noise)
        ctx.sigma, ctx.num_samples = sigma, num_samples
        return onehot.mean(dim=1)  # [b, k, m]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        onehot, noise = ctx.saved_tensors
        jac = torch.einsum("bnkm,bne->bkme", onehot, noise) / (ctx.num_samples * ctx.sigma)
        return torch.einsum("bkm,bkme->be", grad, jac), None, None, None


class Adapter(nn.Module):
    """Residual bottleneck, zero-initialised: training starts exactly from CLIP's own space."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x + self.down(F.gelu(self.up(x))), dim=-1)


class LDA(nn.Module):
    """Lightweight dynamic aggregator: (w_sum, w_mean) from the caption's words and its length."""

    def __init__(self, dim: int, hidden: int, max_words: int) -> None:
        super().__init__()
        self.max_words = max_words
        self.up = nn.Linear(dim + 1, hidden)
        self.down = nn.Linear(hidden, dim + 1)
        self.head = nn.Linear(dim + 1, 2)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = mask.sum(-1, keepdim=True).to(words.dtype)
        pooled = (words * mask[..., None]).sum(-2) / n.clamp(min=1)
        x = torch.cat([pooled, n / self.max_words], dim=-1)
        x = x + self.down(F.gelu(self.up(x)))
        return torch.softmax(self.head(x), dim=-1)


@dataclass
class PreparedImages:
    """Per-image work done once, whatever the query: selection, adapters."""

    patches: torch.Tensor  # [B, K, d] selected, adapted, normalised
    globals: torch.Tensor  # [B, d]


@dataclass
class PreparedTexts:
    words: torch.Tensor  # [B, max_words, d] adapted, normalised, zero padded
    mask: torch.Tensor  # [B, max_words]
    globals: torch.Tensor  # [B, d]
    lda: torch.Tensor  # [B, 2] (w_sum, w_mean)


class Matcher(nn.Module):
    def __init__(self, config: MatcherConfig) -> None:
        super().__init__()
        c = self.config = config
        if c.top_k > c.num_patches:
            raise ValueError(f"top_k={c.top_k} is more than the backbone's {c.num_patches} patches")
        # MLP on [patch; global], its first layer split in two so the global half is
        # computed once per image instead of once per patch (same function, half the FLOPs).
        self.sel_patch = nn.Linear(c.dim, c.selector_hidden)
        self.sel_global = nn.Linear(c.dim, c.selector_hidden, bias=False)
        self.sel_out = nn.Linear(c.selector_hidden, 1)
        self.patch_adapter = Adapter(c.dim, c.adapter_hidden) if c.adapters else None
        self.word_adapter = Adapter(c.dim, c.adapter_hidden) if c.adapters else None
        self.lin1 = nn.Linear(c.max_words, c.max_words)  # over the words of one patch row
        self.lin2 = nn.Linear(c.top_k, c.top_k)  # over the patch scores
        self.lin3 = nn.Linear(c.top_k, c.top_k)  # over the patches of one word column
        self.lda = LDA(c.dim, c.lda_hidden, c.max_words)
        total = c.fusion_global + c.fusion_patch
        self.register_buffer("fusion_total", torch.tensor(total))
        mix = torch.tensor(math.log(c.fusion_patch / c.fusion_global))  # sigmoid(mix) = patch share
        self.fusion_mix = nn.Parameter(mix, requires_grad=c.fusion == "learned")

    # ----------------------------------------------------------- per side
    def select(self, patches: torch.Tensor, globals_: torch.Tensor) -> torch.Tensor:
        """[B, M, d] → [B, K, d]: hard top-K at inference, perturbed (differentiable) in training."""
        b, m, d = patches.shape
        h = self.sel_patch(patches) + self.sel_global(globals_)[:, None, :]
        scores = self.sel_out(F.gelu(h)).squeeze(-1)  # [B, M]
        k = self.config.top_k
        if self.training and torch.is_grad_enabled():
            ind = PerturbedTopK.apply(scores, k, self.config.num_samples, self.config.sigma)
            return ind @ patches
        idx = torch.sort(torch.topk(scores, k, dim=-1).indices, dim=-1).values
        return torch.gather(patches, 1, idx[..., None].expand(b, k, d))

    def prepare_images(self, patches: torch.Tensor, globals_: torch.Tensor) -> PreparedImages:
        patches = patches.float()
        sel = self.select(patches, globals_.float())
        sel = self.patch_adapter(sel) if self.patch_adapter is not None else F.normalize(sel, dim=-1)
        return PreparedImages(sel, globals_.float())

    def prepare_texts(self, words: torch.Tensor, mask: torch.Tensor, globals_: torch.Tensor) -> PreparedTexts:
        lmax = self.config.max_words
        words, mask = words[:, :lmax].float(), mask[:, :lmax]
        if words.shape[1] < lmax:
            pad = lmax - words.shape[1]
            words = F.pad(words, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad), value=False)
        if self.word_adapter is not None:
            words = self.word_adapter(words)
        words = words * mask[..., None]
        return PreparedTexts(words, mask, globals_.float(), self.lda(words, mask))

    # -------------------------------------------------------- interaction
    def _patch_score(self, sim: torch.Tensor, mask: torch.Tensor, lda: torch.Tensor) -> torch.Tensor:
        """sim [..., K, L] with word mask [..., L] and LDA weights [..., 2] → S_patch [...]."""
        wmask = mask[..., None, :].expand_as(sim)
        # patch rows: α = softmax(Linear₁(softmax(c))) over valid words; s_p = αᵀc
        alpha = masked_softmax(self.lin1(masked_softmax(sim, wmask)), wmask)
        s_p = (alpha * sim).sum(-1)  # [..., K]
        beta = torch.softmax(self.lin2(torch.softmax(s_p, dim=-1)), dim=-1)
        s_w2p = (beta * s_p).sum(-1)
        # word columns: α′ = softmax(Linear₃(softmax(c))) over the K patches; s_w = α′ᵀc
        cols = sim.transpose(-1, -2)  # [..., L, K]
        alpha3 = torch.softmax(self.lin3(torch.softmax(cols, dim=-1)), dim=-1)
        s_w = (alpha3 * cols).sum(-1) * mask  # [..., L]
        n = mask.sum(-1).to(sim.dtype)
        s_sum = s_w.sum(-1)
        s_p2w = lda[..., 0] * s_sum + lda[..., 1] * s_sum / n.clamp(min=1)
        return (s_w2p + s_p2w) / 2

    def fuse(self, s_global: torch.Tensor, s_patch: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fusion_mix)
        return self.fusion_total * ((1 - w) * s_global + w * s_patch)

    def score_pairs(self, img: PreparedImages, txt: PreparedTexts, s_global: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned pairs (image i, text i) → (fused score [N], patch score [N]).

        `s_global` lets a caller that already has the global cosines (Qdrant's scores) pass them in.
        """
        sim = torch.einsum("nkd,nld->nkl", img.patches, txt.words)
        s_patch = self._patch_score(sim, txt.mask, txt.lda)
        if s_global is None:
            s_global = (img.globals * txt.globals).sum(-1)
        return self.fuse(s_global.to(s_patch.dtype), s_patch), s_patch

    def score_matrix(self, img: PreparedImages, txt: PreparedTexts, chunk: int = 65536) -> torch.Tensor:
        """All pairs → fused scores [B_images, B_texts], chunked over texts to bound memory."""
        return self.score_matrices(img, txt, chunk)[0]

    def score_matrices(self, img: PreparedImages, txt: PreparedTexts, chunk: int = 65536
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All pairs → (fused, global, patch) score matrices [B_images, B_texts]."""
        bi, bt = img.patches.shape[0], txt.words.shape[0]
        step = max(1, chunk // max(bi, 1))
        patches, globals_ = [], []
        for lo in range(0, bt, step):
            w, m, lda = txt.words[lo:lo + step], txt.mask[lo:lo + step], txt.lda[lo:lo + step]
            sim = torch.einsum("ikd,tld->itkl", img.patches, w)
            patches.append(self._patch_score(sim, m[None].expand(bi, -1, -1), lda[None].expand(bi, -1, -1)))
            globals_.append(img.globals @ txt.globals[lo:lo + step].T)
        if not patches:
            empty = img.globals.new_zeros(bi, 0)
            return empty, empty, empty
        g, p = torch.cat(globals_, dim=1), torch.cat(patches, dim=1)
        return self.fuse(g, p), g, p

    def set_patch_share(self, share: float) -> None:
        """Set the fusion's patch share w (S = total·((1−w)·global + w·patch)), e.g. as tuned on validation."""
        share = min(max(share, 1e-4), 1 - 1e-4)
        with torch.no_grad():
            self.fusion_mix.fill_(math.log(share / (1 - share)))

    # ------------------------------------------------------ service calls
    def rank_images(self, txt: PreparedTexts, img: PreparedImages) -> tuple[torch.Tensor, torch.Tensor]:
        """One text query (batch 1) against k image candidates → (fused [k], patch [k])."""
        k = img.patches.shape[0]
        q = PreparedTexts(txt.words.expand(k, -1, -1), txt.mask.expand(k, -1), txt.globals.expand(k, -1),
                          txt.lda.expand(k, -1))
        return self.score_pairs(img, q)

    def rank_texts(self, img: PreparedImages, txt: PreparedTexts) -> tuple[torch.Tensor, torch.Tensor]:
        """One image query (batch 1) against k caption candidates → (fused [k], patch [k])."""
        k = txt.words.shape[0]
        q = PreparedImages(img.patches.expand(k, -1, -1), img.globals.expand(k, -1))
        return self.score_pairs(q, txt)


def triplet_loss(scores: torch.Tensor, margin: float = 0.2, hardest: bool = True) -> torch.Tensor:
    """VSE++ loss on an [images × texts] score matrix whose diagonal holds the positives, both directions.

    `hardest=False` sums over every violating negative (the warm-up of the first epoch).
    """
    diag = scores.diag()
    eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    cost_t = (margin + scores - diag[:, None]).clamp(min=0).masked_fill(eye, 0)  # image → wrong texts
    cost_i = (margin + scores - diag[None, :]).clamp(min=0).masked_fill(eye, 0)  # text → wrong images
    if hardest:
        return cost_t.max(dim=1).values.sum() + cost_i.max(dim=0).values.sum()
    return cost_t.sum() + cost_i.sum()
