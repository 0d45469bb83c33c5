"""The training losses, in one place.

* `triplet_loss` — MGAN eq. 14 (VSE++ hardest negative, margin 0.2), on an in-batch score matrix;
* `list_triplet_loss` — the same hinge where each query's "batch" is its mined global top-k;
* `listwise_loss` — softmax cross-entropy over each query's candidates: what the service's rerank orders;
* `relevance_loss` — UARDA's relevance-distinguishable term: word evidence of true pairs above the learned
  boundary, the weakest word of false pairs below it;
* `hardest_bce_loss` — CAMP's binary cross-entropy on each query's positives and its hardest negative;
* `filip_loss` — token-wise late-interaction contrastive loss that trains a backbone's tokens (FILIP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model.tokens import centre_tokens


def triplet_loss(scores: torch.Tensor, margin: float = 0.2, hardest: bool = True,
                 positives: torch.Tensor | None = None) -> torch.Tensor:
    """VSE++ loss (MGAN eq. 14) on an [images × texts] score matrix whose diagonal holds the positives.

    `positives` [images × texts] marks other pairs that are also true (identical or equivalent captions):
    they are never negatives. `hardest=False` sums over every violating negative (a warm-up).
    """
    diag = scores.diag()
    skip = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    if positives is not None:
        skip = skip | positives
    cost_t = (margin + scores - diag[:, None]).clamp(min=0).masked_fill(skip, 0)  # image → wrong texts
    cost_i = (margin + scores - diag[None, :]).clamp(min=0).masked_fill(skip, 0)  # text → wrong images
    if hardest:
        return cost_t.max(dim=1).values.sum() + cost_i.max(dim=0).values.sum()
    return cost_t.sum() + cost_i.sum()


def listwise_loss(scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor,
                  scale: float | torch.Tensor = 20.0) -> torch.Tensor:
    """Softmax cross-entropy of each query over its candidates [Q, C]: −log Σ_pos p, mean over queries.

    Queries without a valid positive among their candidates are skipped.
    """
    logits = (scale * scores).masked_fill(~valid, float("-inf"))
    pos = positive & valid
    keep = pos.any(dim=1)
    if not bool(keep.any()):
        return scores.sum() * 0
    lse_all = torch.logsumexp(logits[keep], dim=1)
    lse_pos = torch.logsumexp(logits[keep].masked_fill(~pos[keep], float("-inf")), dim=1)
    return (lse_all - lse_pos).mean()


def list_triplet_loss(scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor, margin: float = 0.2
                      ) -> torch.Tensor:
    """Hinge between each query's best positive and its hardest negative among its candidates [Q, C]; summed."""
    neg_inf = torch.finfo(scores.dtype).min
    pos = positive & valid
    neg = ~positive & valid
    keep = pos.any(dim=1) & neg.any(dim=1)
    best_pos = scores.masked_fill(~pos, neg_inf).max(dim=1).values
    hardest = scores.masked_fill(~neg, neg_inf).max(dim=1).values
    return ((margin - best_pos + hardest).clamp(min=0) * keep).sum()


def hardest_bce_loss(logits: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """CAMP's objective on each query's candidate list [Q, C] of matching logits: binary cross-entropy of its
    positives (label 1, averaged per query) and of its hardest negative (label 0), the candidate it most
    wrongly believes. Candidates are the mined global top-k, so the hardest negatives are the ones the service
    has to reorder. Queries without a valid positive or negative among their candidates are skipped."""
    neg_inf = torch.finfo(logits.dtype).min
    pos, neg = positive & valid, ~positive & valid
    keep = pos.any(dim=1) & neg.any(dim=1)
    if not bool(keep.any()):
        return logits.sum() * 0
    lg, pos, neg = logits[keep], pos[keep], neg[keep]
    p = pos.to(lg.dtype)
    on_pos = (F.softplus(-lg) * p).sum(1) / p.sum(1)  # −log σ(z) of the positives
    hardest = lg.masked_fill(~neg, neg_inf).max(dim=1).values
    return (on_pos + F.softplus(hardest)).mean()  # −log(1 − σ(z)) of the hardest negative


def relevance_loss(evidence: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor,
                   boundary: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Separates relevant from irrelevant word–patch similarities around the boundary b (UARDA).

    `evidence` [N, L]: each word's best cosine over its pair's patches (Matcher.word_evidence), `mask` its real
    words, `positive`/`valid` [N] the pairs' labels. A true pair has a relevant patch for every word, so each
    word's evidence should clear b + margin. A false pair has at least one word the image does not support — a
    missing object, colour or (in context) relation — so its weakest word should stay below b − margin. The two
    hinges are averaged over their pairs; both pull b towards the gap between the distributions and push the
    features apart.
    """
    mask = mask.bool()
    real = mask.any(dim=1) & valid
    pos, neg = positive & real, ~positive & real
    zero = evidence.sum() * 0
    m = mask.to(evidence.dtype)
    per_word = (boundary + margin - evidence).clamp(min=0) * m
    pos_term = (per_word.sum(1) / m.sum(1).clamp(min=1))[pos].mean() if bool(pos.any()) else zero
    weakest = evidence.masked_fill(~mask, float("inf")).min(dim=1).values
    neg_term = (weakest - boundary + margin).clamp(min=0)[neg].mean() if bool(neg.any()) else zero
    return pos_term + neg_term


def _ce_rows(logits: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of each row of a square matrix against its diagonal, excluded cells left out."""
    if exclude is not None:
        logits = logits.masked_fill(exclude, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
                     exclude: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE on aligned [B, d] globals; `exclude` [B, B] marks off-diagonal pairs that are
    true too (equivalent captions), which are left out of the softmax instead of being pushed apart."""
    logits = scale * img @ txt.T
    ex_t = exclude.T if exclude is not None else None
    return (_ce_rows(logits, exclude) + _ce_rows(logits.T, ex_t)) / 2



def filip_loss(img_tok: torch.Tensor, txt_tok: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor,
               exclude: torch.Tensor | None = None, centre: bool = False) -> torch.Tensor:
    """Token-wise max similarity contrastive loss (FILIP): trains patch and word tokens directly.

    `centre`: on centred tokens (centre_tokens), so the loss cannot be met with the global gist copied into
    every token and has to be met with word-aligned local detail.
    """
    if centre:
        img_tok, txt_tok = centre_tokens(img_tok), centre_tokens(txt_tok, mask)
    sim = torch.einsum("imd,tld->itml", img_tok, txt_tok)  # [B, B, M, L]
    m = mask[None, :, None, :]
    i2t = sim.masked_fill(~m, -1e4).max(dim=3).values.mean(dim=2)  # each patch's best word
    t2i = (sim.max(dim=2).values * mask[None]).sum(-1) / mask.sum(-1).clamp(min=1)[None]  # each word's best patch
    ex_t = exclude.T if exclude is not None else None
    return (_ce_rows(scale * i2t, exclude) + _ce_rows(scale * t2i.T, ex_t)) / 2
