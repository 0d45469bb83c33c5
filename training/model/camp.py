"""CAMP's cross-modal adaptive message passing (Wang et al., ICCV 2019): the matcher's `interaction: "camp"`.

For one image–caption pair, over the prepared patches p_k and words w_l:

* messages: each word receives the attention-weighted mean of the patches it matches, m_l = Σ_k a_lk p_k, and
  each patch the attention-weighted mean of the words, m_k = Σ_l b_lk w_l (a: softmax over patches, b: over
  the caption's words, of τ·cos);
* gates: g = σ(κ·(⟨x, m⟩ − c)) per token, its agreement with its own message, decides how much of the message
  is fused in, with a residual: x̂ = x + g·m. A word whose message disagrees with it (the image has no patch
  for "purple") keeps to itself, so its fused vector stays away from the image's;
* attention pooling per side (a learned query each) gives one vector per side, and a small MLP on the two
  (with their cosine as a skip path) predicts the matching logit.

Why it is written in coefficients: every fused token is a combination of the pair's own tokens, so each
pooled vector is one too (pooled words = Σ_l β_l w_l + Σ_k e_k p_k). The messages never exist as K×d or L×d
tensors per pair: the work per pair is the L×K similarity that every interaction needs, a few L×K reductions
and (L+K)·d for the two pooled vectors. Nothing of a pair can be prepared per item, yet a candidate costs
about what MGAN's interaction costs.

The logit is not on the global cosine's scale; `Matcher.fine_of` maps it through a logistic fitted on
validation (calibrate.tune) before it is fused.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class CampOutput(NamedTuple):
    logit: torch.Tensor  # [...] the pair's matching logit
    word_attention: torch.Tensor  # [..., L, K] each word's attention over the patches (its message)
    word_gate: torch.Tensor  # [..., L] how much of its message each word took in (0 on padding)
    word_pool: torch.Tensor  # [..., L] each word's weight in the pooled caption vector (0 on padding)


class CrossModalGate(nn.Module):
    """Gated message passing in both directions, attention pooling and a logit head, for batches of pairs.

    Starts as a meaningful score (zero-initialised head, mean pooling, a gate near open for agreeing tokens):
    the logit is then scale·(cos(pooled words, pooled patches) − offset), which training reshapes."""

    def __init__(self, dim: int, hidden: int, temperature: float) -> None:
        super().__init__()
        self.log_temp = nn.Parameter(torch.tensor(math.log(temperature)))
        self.gate_scale = nn.Parameter(torch.tensor(10.0))
        self.gate_centre = nn.Parameter(torch.tensor(0.0))
        self.word_query = nn.Parameter(torch.zeros(dim))  # pooling queries: zero, so pooling starts as a mean
        self.patch_query = nn.Parameter(torch.zeros(dim))
        self.head = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.head[2].weight)
        nn.init.zeros_(self.head[2].bias)
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.offset = nn.Parameter(torch.tensor(0.5))

    def forward(self, patches: torch.Tensor, words: torch.Tensor, mask: torch.Tensor, sim: torch.Tensor
                ) -> CampOutput:
        """patches [..., K, d], words [..., L, d] (zero on padding), mask [..., L] and their cosines sim
        [..., L, K]; the leading dims of patches and words broadcast against sim's (one query, k candidates)."""
        m = mask.to(sim.dtype)
        pad = (m - 1) * 1e4  # 0 on real words, −10⁴ on padding: its softmax weights underflow to exactly 0
        t = self.log_temp.exp()
        a = torch.softmax(t * sim, dim=-1)  # [..., L, K] word l's attention over the patches
        b = torch.softmax(t * sim + pad[..., None], dim=-2)  # [..., L, K] patch k's attention over the words
        gate_w = torch.sigmoid(self.gate_scale * ((a * sim).sum(-1) - self.gate_centre)) * m  # ⟨w_l, m_l⟩
        gate_p = torch.sigmoid(self.gate_scale * ((b * sim).sum(-2) - self.gate_centre))  # ⟨p_k, m_k⟩
        # the pooling logits of the fused tokens, q·x̂ = q·x + g·Σ (attention · q·other side)
        qw_words, qw_patches = words @ self.word_query, patches @ self.word_query
        qp_words, qp_patches = words @ self.patch_query, patches @ self.patch_query
        beta = torch.softmax(qw_words + gate_w * (a * qw_patches[..., None, :]).sum(-1) + pad, dim=-1) * m
        gamma = torch.softmax(qp_patches + gate_p * (b * qp_words[..., :, None]).sum(-2), dim=-1)
        # pooled words = Σ_l β_l w_l + Σ_k (Σ_l β_l g_l a_lk) p_k; pooled patches likewise
        on_patches = ((beta * gate_w)[..., None] * a).sum(-2)  # [..., K]
        on_words = (b * (gamma * gate_p)[..., None, :]).sum(-1)  # [..., L]
        pooled_w = (beta[..., None, :] @ words).squeeze(-2) + (on_patches[..., None, :] @ patches).squeeze(-2)
        pooled_p = (gamma[..., None, :] @ patches).squeeze(-2) + (on_words[..., None, :] @ words).squeeze(-2)
        joint = F.normalize(pooled_w, dim=-1) * F.normalize(pooled_p, dim=-1)
        logit = self.scale * (joint.sum(-1) - self.offset) + self.head(joint).squeeze(-1)
        return CampOutput(logit, a, gate_w, beta)
