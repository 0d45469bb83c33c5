"""`finesearch train`'s options: one dataclass whose fields are the CLI flags and whose help lines are the docs.

Kept apart from the training loop (torch) so that the command line builds its flags without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def opt(default: Any, help: str, shown: str | None = None) -> Any:
    """A field with its help line; `shown` is the default as the help states it, for a default that depends
    on other settings."""
    return field(default=default, metadata={"help": help, "shown": default if shown is None else shown})


@dataclass
class TrainConfig:
    seed: int = opt(0, "seed of every random choice (init, batches, mining)")
    # stage 1: backbone from scratch (skipped for pretrained backbones)
    clip_steps: int = opt(0, "backbone optimiser steps (from scratch; 1000 with --from-scratch when not given)")
    clip_minutes: float | None = opt(None, "backbone wall-clock budget in minutes; whichever of steps and "
                                           "minutes ends first")
    clip_batch: int = opt(128, "backbone batch size")
    clip_lr: float = opt(1e-3, "backbone learning rate")
    token_loss: float = opt(1.0, "weight of the FILIP-style word–patch contrastive term")
    token_centre: bool = opt(False, "the token term on centred tokens")
    hard_batches: float = opt(0.5, "share of each batch drawn as clusters of mutual neighbours")
    cluster: int = opt(8, "images per cluster")
    mine_every: int = opt(200, "re-mine the clusters from the model's own global similarities every N steps "
                               "(0: never)")
    mine_after: float = opt(0.2, "start mining after this share of the steps (word-overlap clusters before)")
    hard_global: bool = opt(True, "the global contrastive loss sees the clusters too (else only the random part)")
    clip_precision: str = opt("auto", "auto (bf16 autocast where the CPU supports it), fp32 or bf16")
    # stage 2: matcher
    steps: int = opt(1000, "matcher optimiser steps")
    minutes: float | None = opt(None, "matcher wall-clock budget in minutes; whichever ends first")
    queries: int = opt(32, "queries per direction per step, each against its mined candidates")
    candidates: int = opt(16, "candidates per query per step, from its global top-k mined once from the frozen "
                              "globals")
    candidate_pool: int | None = opt(None, "mine each query's global top-N (N > candidates) and draw its candidates "
                                           "from it each step: the hardest half always, the rest at random; 0: "
                                           "the top `candidates` only", shown="calibrate-candidates, the depth the "
                                           "service reranks")
    lr: float = opt(1e-3, "matcher learning rate")
    weight_decay: float = opt(1e-4, "matcher weight decay")
    schedule: str = opt("cosine", "learning-rate schedule: cosine or step")
    grad_clip: float = opt(2.0, "gradient norm clip")
    margin: float = opt(0.2, "margin of the hardest-negative hinge (MGAN eq. 14)")
    listwise: float = opt(1.0, "weight of the softmax cross-entropy over each query's candidates")
    listwise_scale: float = opt(20.0, "logit scale of the listwise softmax")
    triplet: float = opt(1.0, "weight of MGAN's hardest-negative hinge among the candidates")
    patch_loss: float = opt(1.0, "the same losses on the word–patch score alone, whatever the fusion share (for "
                                 "interaction 'camp': the weight of its binary cross-entropy on the logits)")
    patch_bce: float = opt(1.0, "weight of a binary cross-entropy on the word–patch score beside its ranking "
                                "losses: each query's positives above, its hardest negative below one learned "
                                "threshold (CAMP's objective: a match classifier, which text→image ranking needs; "
                                "interaction 'camp' has its own)")
    selector_loss: float = opt(1.0, "weight of a KL divergence from where the positive caption's words attend "
                                    "over every patch to the selector's softmax (matchers with a selector, "
                                    "top_k > 0, only)")
    relevance_loss: float = opt(1.0, "weight of UARDA's relevance-distinguishable term (matchers with "
                                     "relevance 'uarda' only)")
    relevance_margin: float = opt(0.1, "its margin on each side of the learned relevance boundary")
    view_diversity: float = opt(0.1, "weight of the region level's view-diversity term ‖AAᵀ − I‖² (matchers with "
                                     "views only)")
    skip_implied: bool = opt(False, "leave out of the losses the candidates a query caption is implied by (one of "
                                   "the image's captions with words dropped) without being one of them")
    val_every: int = opt(250, "validate every N matcher steps and keep the best")
    val_candidates: int = opt(20, "candidates per query in those validations")
    tune_fusion: bool = opt(True, "fit the per-direction patch share and score calibration on validation")
    calibrate_candidates: int = opt(100, "candidates when calibrating (the service's default)")
    unfreeze_blocks: int = opt(0, "fine-tune the last N blocks of both towers with the matcher (pretrained "
                                  "backbones)")
    backbone_lr_scale: float = opt(0.1, "their learning rate relative to the matcher's")
    workers: int = opt(4, "image decoding threads")
    matcher: dict[str, Any] = field(default_factory=dict)
