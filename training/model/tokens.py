"""Shape helpers for token features that the backbone, the matcher and training all apply, so a caption's
padding and a token's centring mean the same thing at indexing, at serve time and in training."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_words(tokens: torch.Tensor, mask: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Word tokens [B, L, d] and mask [B, L] cut or zero-padded to exactly `width` positions,
    so batches of captions with different lengths can be stacked."""
    tokens, mask = tokens[:, :width], mask[:, :width]
    pad = width - tokens.shape[1]
    return F.pad(tokens, (0, 0, 0, pad)), F.pad(mask, (0, pad), value=False)


def centre_tokens(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each item's tokens minus their mean, re-normalised (zero where masked): what is particular to each
    patch or word, without the image's or caption's shared gist that the global vector already carries."""
    if mask is None:
        mean = tokens.mean(dim=-2, keepdim=True)
        return F.normalize(tokens - mean, dim=-1)
    m = mask[..., None].to(tokens.dtype)
    mean = (tokens * m).sum(dim=-2, keepdim=True) / m.sum(dim=-2, keepdim=True).clamp(min=1)
    return F.normalize(tokens - mean, dim=-1) * m
