"""The matcher's building blocks: a masked softmax, the perturbed top-k selection (MGAN eq. 5), the
adapters and context refiners applied to tokens, and LDA's aggregation weights."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def masked_softmax(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the positions where mask is True; an all-masked row gives zeros, not NaN."""
    x = x.masked_fill(~mask, float("-inf"))
    out = torch.softmax(x, dim=dim)
    return torch.nan_to_num(out, nan=0.0) * mask


class PerturbedTopK(torch.autograd.Function):
    """Differentiable top-k (Berthet et al. 2020, as in TS2-Net): the mean of the hard
    top-k indicators of noisy scores, with the perturbed-optimizer gradient E[y·Zᵀ]/σ.

    `sigma` is a tensor [B, 1]: each image's noise scale (relative to its own score spread)."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, k: int, num_samples: int, sigma: torch.Tensor) -> torch.Tensor:
        b, m = scores.shape
        noise = torch.randn(b, num_samples, m, device=scores.device, dtype=scores.dtype)
        idx = torch.topk(scores[:, None, :] + sigma[:, :, None] * noise, k, dim=-1, sorted=False).indices
        idx = torch.sort(idx, dim=-1).values  # keep spatial order
        onehot = F.one_hot(idx, m).to(scores.dtype)  # [b, n, k, m]
        ctx.save_for_backward(onehot, noise, sigma)
        ctx.num_samples = num_samples
        return onehot.mean(dim=1)  # [b, k, m]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        onehot, noise, sigma = ctx.saved_tensors
        jac = torch.einsum("bnkm,bne->bkme", onehot, noise) / (ctx.num_samples * sigma[:, :, None, None])
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


class Refiner(nn.Module):
    """Pre-norm transformer block over one item's tokens, its output projections zero-initialised (identity at
    the start). Padding never reaches a real token: masked keys are ignored, masked outputs are zeroed."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        for lin in (self.attn.out_proj, self.mlp[2]):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        pad = None
        if mask is not None:
            pad = ~mask
            pad = pad & mask.any(dim=-1, keepdim=True)  # an empty caption attends to its padding: zeroed below
        h = self.norm1(x)
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return x * mask[..., None] if mask is not None else x


class LDA(nn.Module):
    """Lightweight dynamic aggregator: (w_sum, w_mean) from the caption's words and its length.

    Project up (hidden ≥ d + 1), non-linearity, project back, residual, softmax — as the LDA paper describes.
    """

    def __init__(self, dim: int, hidden: int, max_words: int, branches: int = 2) -> None:
        super().__init__()
        self.max_words = max_words
        self.up = nn.Linear(dim + 1, hidden)
        self.down = nn.Linear(hidden, dim + 1)
        self.head = nn.Linear(dim + 1, branches)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = mask.sum(-1, keepdim=True).to(words.dtype)
        pooled = (words * mask[..., None]).sum(-2) / n.clamp(min=1)
        x = torch.cat([pooled, n / self.max_words], dim=-1)
        x = x + self.down(F.gelu(self.up(x)))
        return torch.softmax(self.head(x), dim=-1)
