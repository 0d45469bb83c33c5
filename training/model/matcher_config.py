"""The matcher's options, saved in every bundle: what each one does, which of them shape an item's prepared
features (and so the token bank's fingerprint), and what an older bundle without an option meant."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

DIRECTIONS = ("t2i", "i2t")  # t2i: a caption ranks images; i2t: an image ranks captions
KINDS = ("fused", "global", "fine")


@dataclass
class MatcherConfig:
    dim: int = 512
    num_patches: int = 49  # M of the backbone (grid²)
    max_words: int = 75  # context_length − 2
    # patch selector (MGAN eq. 5); top_k = 0 keeps every patch and skips the selector
    top_k: int = 0
    selector_hidden: int = 64
    sigma: float = 0.5  # perturbed top-k noise, relative to the std of the image's selector scores
    num_samples: int = 100  # perturbed top-k samples
    # tokens minus their item's mean (what is particular to each patch or word), as the backbone's token term saw them
    centre: bool = False
    # per-item context before matching, each zero-initialised (the matcher starts from the backbone's own tokens):
    # word_context: one bidirectional self-attention block over the caption's words (the backbone's text tokens are
    # causal, so "red" never sees the "circle" it belongs to nor the "left of" after it); patch_position: a learned
    # embedding of each patch's place in the grid (relations such as "left of" or "above" are about places);
    # patch_context: a self-attention block over the image's patches (a patch learns what lies beside it: +2.4
    # validation rSum, nearly all text→image; prepared at indexing, so a text query pays nothing for it)
    word_context: bool = True
    patch_position: bool = True
    patch_context: bool = True
    # residual adapters on tokens (zero-initialised); patch_adapter=False keeps them on the words only: the
    # per-patch MLP is most of the rerank stage's time (every candidate image's every patch, at query time)
    adapters: bool = True
    patch_adapter: bool = False
    adapter_hidden: int = 256
    # similarity interaction (eqs. 7–9)
    temperature: float = 10.0  # initial inverse temperature of the inner softmaxes
    learn_temperature: bool = True
    slot_linear: bool = False  # MGAN's positional Linear₁₋₃ (ablation; order-dependent)
    # LDA aggregation of the word scores
    lda_hidden: int = 256
    aggregation: str = "weighted"  # "weighted": importance-weighted sum + mean; "sum": plain Σ + mean
    # a third LDA branch: the soft minimum of the word scores (learnable temperature). A caption is true of an
    # image only if each of its parts is, so one unmatched word ("purple" where the triangle is red) should
    # weigh more than its 1/L share of a mean
    softmin: bool = False
    # UARDA's adaptive relevance threshold: a learned boundary b on the word–patch cosines, applied before the
    # eq. 7–9 attention as a gate σ(κ·(sim − b)), so a pair below b gets no weight and a word with no patch above
    # it contributes ~0 (a missing object or colour lowers the score instead of borrowing its nearest patch).
    # b starts at 0, the fixed threshold of a ReLU (SCAN), and is learned with the features; training adds a
    # term that pushes true pairs' word evidence above b and false pairs' weakest word below it
    relevance: str = "none"  # or "uarda"
    relevance_sharpness: float = 20.0  # κ: how soft the gate is around the boundary (fixed: a learned κ can flatten it)
    # MGAN's region level with multi-view summarisation (eqs. 3–4, after CAMERA): `views` learned attentions each
    # pool the image's prepared patches into one vector (no detector: views over patches), and the caption's mean
    # word vector matches its best view. S_region joins the fine score as patch + ρ·region (ρ trained, then
    # tuned on validation); a diversity term keeps the views apart. 0: off
    views: int = 0
    # the similarity interaction: "mgan" (eqs. 7–9 with LDA, above) or "camp": CAMP's cross-modal gated message
    # passing, attention pooling and an MLP logit (training/model/camp.py), trained with binary cross-entropy on each
    # query's positives and its hardest mined negative, its logit calibrated on validation before fusion
    interaction: str = "mgan"
    camp_hidden: int = 256
    # fusion with the global score: S = (1−w)·global + w·patch, w learned in training, then tuned per direction
    fusion: str = "learned"  # or "fixed"
    fusion_share: float = 0.25  # MGAN's β=0.6, λ=0.2 as a share

    def __post_init__(self) -> None:
        if self.aggregation not in ("weighted", "sum"):
            raise ValueError(f"aggregation must be 'weighted' or 'sum', not {self.aggregation!r}")
        if self.relevance not in ("none", "uarda"):
            raise ValueError(f"relevance must be 'none' or 'uarda', not {self.relevance!r}")
        if self.relevance == "uarda" and self.slot_linear:
            raise ValueError("relevance 'uarda' gates the order-free interaction; it cannot be combined with "
                             "slot_linear")
        if self.interaction not in ("mgan", "camp"):
            raise ValueError(f"interaction must be 'mgan' or 'camp', not {self.interaction!r}")
        if self.interaction == "camp" and (self.slot_linear or self.relevance != "none" or self.views):
            raise ValueError("interaction 'camp' replaces the eq. 7–10 interaction: it cannot be combined with "
                             "slot_linear, relevance 'uarda' or views")
        if self.views < 0:
            raise ValueError("views must be 0 (off) or a number of views")
        if self.relevance_sharpness <= 0:
            raise ValueError("relevance_sharpness must be positive")
        if self.fusion not in ("learned", "fixed"):
            raise ValueError(f"fusion must be 'learned' or 'fixed', not {self.fusion!r}")
        if not 0 < self.fusion_share < 1:
            raise ValueError("fusion_share must be between 0 and 1")
        if self.top_k < 0 or self.top_k > self.num_patches:
            raise ValueError(f"top_k={self.top_k} must be 0 (all) or at most the backbone's {self.num_patches} "
                             "patches")

    @property
    def kept_patches(self) -> int:
        return self.top_k or self.num_patches

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MatcherConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown matcher options {sorted(unknown)} (bundle from another finesearch version?)")
        return cls(**{**ABSENT_MEANS, **d})


# options added after bundle format 2 whose new default differs from what older bundles were trained with:
# a saved config without them gets these values, so older bundles keep scoring exactly as they were trained
ABSENT_MEANS = {"word_context": False, "patch_position": False, "patch_context": False, "softmin": False,
                "patch_adapter": True}


# the modules whose weights shape an item's prepared features (what the token bank stores at index time); the
# interaction's temperatures, the word importances and the fusion act on them at query time and may change freely
PREPARATION_MODULES = ("sel_patch", "sel_global", "sel_out", "patch_refiner", "patch_pos", "patch_adapter",
                       "word_refiner", "word_adapter", "lda")
PREPARATION_OPTIONS = ("dim", "num_patches", "max_words", "top_k", "selector_hidden", "centre", "word_context",
                       "patch_position", "patch_context", "adapters", "patch_adapter", "adapter_hidden", "lda_hidden",
                       "softmin")
