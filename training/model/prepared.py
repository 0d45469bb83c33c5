"""The matcher's tensor bundles: what it prepared once per image or caption (kept by the token bank at
indexing time), and what the interaction computed for a batch of pairs (for losses and explanations)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class PreparedImages:
    """Per-image work done once, whatever the query: selection, adapters."""

    patches: torch.Tensor  # [B, K, d] selected, adapted, normalised
    globals: torch.Tensor  # [B, d]
    # [B, V, d] the region level's view vectors, normalised (matchers with views); None: computed from `patches`
    # when needed (the service keeps only the patches: views cost V·K·d per candidate, less than the interaction)
    views: torch.Tensor | None = None

    @staticmethod
    def of_patches(patches: torch.Tensor) -> PreparedImages:
        """Patches prepared at indexing (as the token bank keeps them) or for a query, without their global
        vectors: callers that pass the global cosines (Qdrant's scores) never read them, so they are zeros."""
        patches = patches.float()
        return PreparedImages(patches, patches.new_zeros(patches.shape[0], patches.shape[-1]))

    def take(self, idx: torch.Tensor | slice) -> PreparedImages:
        return PreparedImages(self.patches[idx], self.globals[idx], None if self.views is None else self.views[idx])

    def expand(self, n: int) -> PreparedImages:
        """One image as n aligned rows, as views of the same memory (explaining one query against a page)."""
        assert self.patches.shape[0] == 1, "expand repeats a single image"
        return PreparedImages(self.patches.expand(n, -1, -1), self.globals.expand(n, -1),
                              None if self.views is None else self.views.expand(n, -1, -1))

    @staticmethod
    def cat(parts: list[PreparedImages]) -> PreparedImages:
        """Batches prepared apart (evaluation prepares a whole split in chunks) as one."""
        views = [p.views for p in parts if p.views is not None]
        return PreparedImages(torch.cat([p.patches for p in parts]), torch.cat([p.globals for p in parts]),
                              torch.cat(views) if views else None)


@dataclass
class PreparedTexts:
    """Per-caption work done once: adapted words, their importances and the LDA weights."""

    words: torch.Tensor  # [B, max_words, d] adapted, normalised, zero padded
    mask: torch.Tensor  # [B, max_words]
    globals: torch.Tensor  # [B, d]
    lda: torch.Tensor  # [B, 2] (w_sum, w_mean), or [B, 3] (w_sum, w_mean, w_min) with softmin
    importance: torch.Tensor  # [B, max_words] word weights of the sum branch, summing to 1 over real words

    def take(self, idx: torch.Tensor | slice) -> PreparedTexts:
        return PreparedTexts(self.words[idx], self.mask[idx], self.globals[idx], self.lda[idx], self.importance[idx])

    def expand(self, n: int) -> PreparedTexts:
        """One caption as n aligned rows, as views of the same memory."""
        assert self.words.shape[0] == 1, "expand repeats a single caption"
        return PreparedTexts(*(getattr(self, f.name).expand(n, *getattr(self, f.name).shape[1:])
                               for f in fields(PreparedTexts)))

    @staticmethod
    def cat(parts: list[PreparedTexts]) -> PreparedTexts:
        """Batches prepared apart as one; all were padded to the same max_words."""
        return PreparedTexts(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(PreparedTexts)))

    def trimmed(self) -> PreparedTexts:
        """Padding cut to the longest caption here: the same scores (masks), less work per pair."""
        n = max(1, int(self.mask.sum(dim=1).max())) if self.mask.shape[0] else 1
        return PreparedTexts(self.words[:, :n], self.mask[:, :n], self.globals, self.lda, self.importance[:, :n])


@dataclass
class Interaction:
    """What the interaction computed for a batch of pairs, kept for losses and explanations."""

    patch: torch.Tensor  # [...] S_patch = (s_w2p + s_p2w) / 2
    word_scores: torch.Tensor  # [..., L] s_w (eq. 9), zero on padding
    word_attention: torch.Tensor  # [..., L, K] α′: each word's weights over the kept patches
    word_weights: torch.Tensor  # [..., L] each word's weight in s_p2w = Σ_l weight_l · s_w,l (LDA), zero on padding
    patch_side: torch.Tensor  # [...] s_w2p (eqs. 7–8), so S_patch = (patch_side + Σ_l weight_l · s_w,l) / 2
