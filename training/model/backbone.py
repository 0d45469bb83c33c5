"""open_clip wrapper that yields global vectors *and* per-token features in the joint space.

The stock `CLIP.encode_text` returns only the EOT vector, and the vision tower
returns its tokens before the output projection; the fine-grained matcher needs
every word and every patch projected into the same d-dimensional space as the
globals. This module is the one place that knows how, so indexing, training and
serving cannot disagree about what a "token" is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .weights import (
    BackboneError,
    from_checkpoint,
    from_tag,
    looks_like_path,
    model_config,
    random_init,
    register_model_config,
    state_fingerprint,
)


def pick_device(requested: str | None = None) -> torch.device:
    if requested and requested != "auto":
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackboneError(f"device {requested!r} requested but CUDA is not available on this machine")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """fp16 autocast on GPU by default; CPU stays fp32 (half matmuls are slower there)."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in table:
        raise BackboneError(f"unknown precision {precision!r}; use one of auto, fp32, fp16, bf16")
    return table[precision]


@dataclass
class TextFeatures:
    globals: torch.Tensor  # [B, d], L2-normalised
    tokens: torch.Tensor  # [B, L, d], L2-normalised, zero where masked
    mask: torch.Tensor  # [B, L] bool, True for real words

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(dim=1)



@dataclass
class ImageFeatures:
    globals: torch.Tensor  # [B, d]
    tokens: torch.Tensor  # [B, M, d]


@dataclass
class BackboneSource:
    """Where the weights came from, recorded in the index and in model bundles."""

    name: str
    pretrained: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backbone:
    """A loaded open_clip model plus its tokenizer and preprocessing constants."""

    def __init__(
        self,
        model: nn.Module,
        name: str,
        config: dict[str, Any],
        source: BackboneSource,
        device: torch.device,
        precision: str = "auto",
    ) -> None:
        if not hasattr(model, "visual") or not hasattr(model.visual, "output_tokens"):
            raise BackboneError(f"{name}: only ViT image towers expose patch tokens; pick a ViT architecture")
        if not hasattr(model, "token_embedding"):
            raise BackboneError(f"{name}: only open_clip's built-in text tower is supported (no HF text towers)")
        self.model = model.to(device).eval()
        self.model.visual.output_tokens = True
        self.name = name
        self.config = config
        self.source = source
        self.device = device
        self.dtype = pick_dtype(device, precision)
        self.tokenizer = open_clip.get_tokenizer(name)
        pp = model.visual.preprocess_cfg
        self.image_size = int(pp["size"][0] if isinstance(pp["size"], (tuple, list)) else pp["size"])
        self.mean = torch.tensor(pp["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pp["std"], device=device).view(1, 3, 1, 1)
        self.context_length = int(config["text_cfg"].get("context_length", 77))
        self.embed_dim = int(config["embed_dim"])
        self._fingerprint: str | None = None

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, name: str, pretrained: str | None = None, *, from_scratch: bool = False, device: str | None = None,
             precision: str = "auto", cache_dir: str | None = None, allow_download: bool = False, seed: int = 0
             ) -> Backbone:
        """Build from an open_clip name and a pretrained tag or a local checkpoint file.

        No weights and no `from_scratch` is an error, never a silent random init.
        Tags are resolved from the local cache only unless `allow_download` (setting allow_download:
        FINESEARCH_ALLOW_DOWNLOAD=1 or --allow-download), so an offline host fails fast and says what to copy where.
        `hf:DIR` (or a recorded `hf:clip`/`hf:siglip` with the directory as `pretrained`) loads a Hugging Face
        CLIP or SigLIP directory through transformers (training/model/hf_backbone.py).
        """
        if name.startswith("hf:"):
            from .hf_backbone import HFBackbone

            return HFBackbone.load(name, pretrained, device=device, precision=precision)
        config = model_config(name)
        dev = pick_device(device)
        if pretrained is None:
            if not from_scratch:
                raise BackboneError(
                    f"no weights given for {name}: pass a pretrained tag "
                    f"({', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none known'}) "
                    "or a local checkpoint file, or ask for random weights explicitly (--from-scratch)"
                )
            torch.manual_seed(seed)
            return cls(random_init(name), name, config, BackboneSource(name, None, {"init": "scratch", "seed": seed}),
                       dev, precision)
        if looks_like_path(pretrained) or Path(pretrained).exists():
            path = Path(pretrained).expanduser()
            return cls(from_checkpoint(name, path), name, config, BackboneSource(name, str(path)), dev, precision)
        model = from_tag(name, pretrained, cache_dir, allow_download)
        return cls(model, name, config, BackboneSource(name, pretrained), dev, precision)

    @classmethod
    def from_state(
        cls,
        name: str,
        config: dict[str, Any],
        state: dict[str, torch.Tensor],
        source: BackboneSource,
        device: str | None = None,
        precision: str = "auto",
    ) -> Backbone:
        """Rebuild from a config and weights stored elsewhere (a model bundle)."""
        if name.startswith("hf:"):  # the architecture and tokenizer come from the recorded directory
            from .hf_backbone import HFBackbone

            backbone = HFBackbone.load(name, source.pretrained, device=device, precision=precision)
            missing, unexpected = backbone.model.load_state_dict({k: v.float() for k, v in state.items()},
                                                                 strict=False)
            if missing or unexpected:
                raise BackboneError(f"backbone weights do not fit {name}: missing {missing[:5]}, "
                                    f"unexpected {unexpected[:5]}")
            backbone.invalidate_fingerprint()
            return backbone
        register_model_config(name, config)
        model = random_init(name)
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if missing or unexpected:
            raise BackboneError(
                f"backbone weights do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        return cls(model, name, config, source, pick_device(device), precision)

    # ------------------------------------------------------------- geometry
    @property
    def grid(self) -> tuple[int, int]:
        """Rows and columns of the image tower's patch grid."""
        g = self.model.visual.grid_size
        return int(g[0]), int(g[1])

    @property
    def max_words(self) -> int:
        """Word positions a caption can fill: the context less its start and end tokens."""
        return self.context_length - 2

    def word_pieces(self, text: str, n: int) -> list[Any]:
        """The caption's first `n` word tokens with their character spans (explanations)."""
        from .explain import word_pieces

        return word_pieces(self.tokenizer, text, n)

    def unfreeze_parts(self, n: int) -> list[nn.Module | nn.Parameter]:
        """The last `n` blocks of both towers with their output norms and projections (fine-tuning)."""
        m = self.model
        parts: list[nn.Module | nn.Parameter] = [*m.visual.transformer.resblocks[-n:], m.visual.ln_post,
                                                 *m.transformer.resblocks[-n:], m.ln_final]
        return parts + [p for p in (m.visual.proj, m.text_projection) if isinstance(p, nn.Module | nn.Parameter)]

    # ------------------------------------------------------------- identity
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = state_fingerprint(self.config, self.model.state_dict())
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Weights changed (training): the next read recomputes the identity."""
        self._fingerprint = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pretrained": self.source.pretrained,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "context_length": self.context_length,
            "fingerprint": self.fingerprint,
        }

    # ------------------------------------------------------------- encoding
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self.dtype != torch.float32:
            return torch.autocast("cuda", dtype=self.dtype)
        return contextlib.nullcontext()

    def pixels(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 HWC images (already resized to image_size) → normalised NCHW on the device.

        The uint8 batch crosses to the device before the float conversion: four
        times less to copy than float32.
        """
        if isinstance(images, torch.Tensor):
            batch = images
        else:
            batch = torch.from_numpy(np.ascontiguousarray(np.stack(images) if not isinstance(images, np.ndarray)
                                                          else images))
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected uint8 images shaped [B,H,W,3], got {tuple(batch.shape)} {batch.dtype}")
        if batch.shape[1] != self.image_size or batch.shape[2] != self.image_size:
            raise ValueError(f"images must be {self.image_size}x{self.image_size}, got {tuple(batch.shape[1:3])}")
        x = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    # Each tower is split at a block index so training can cache the frozen trunk once and run (and
    # fine-tune) only the last blocks: trunk(…, stop=k) then head(…, start=k) equals the whole tower.
    @property
    def depth(self) -> int:
        """Blocks of the shallower tower: the most that can be unfrozen in both."""
        return min(len(self.model.visual.transformer.resblocks), len(self.model.transformer.resblocks))

    @staticmethod
    def _run_blocks(transformer: nn.Module, x: torch.Tensor, start: int, stop: int | None,
                    attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        for block in transformer.resblocks[start:stop]:
            x = block(x, attn_mask=attn_mask)
        return x if transformer.batch_first else x.transpose(0, 1)

    def image_trunk(self, pixels: torch.Tensor, stop: int) -> torch.Tensor:
        visual = self.model.visual
        return self._run_blocks(visual.transformer, visual._embeds(pixels), 0, stop)

    def image_head(self, x: torch.Tensor, start: int) -> ImageFeatures:
        visual = self.model.visual
        pooled, tokens = visual._pool(self._run_blocks(visual.transformer, x, start, None))
        if visual.proj is not None:
            pooled, tokens = pooled @ visual.proj, tokens @ visual.proj
        return ImageFeatures(F.normalize(pooled.float(), dim=-1), F.normalize(tokens.float(), dim=-1))

    def image_features(self, pixels: torch.Tensor) -> ImageFeatures:
        """Normalised pixels → (global, patch tokens), differentiable (training uses it)."""
        return self.image_head(self.image_trunk(pixels, 0), 0)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def text_features(self, ids: torch.Tensor) -> TextFeatures:
        """Token ids → (global at EOT, word tokens 1..EOT-1, mask): encode_text's steps, every token kept.

        Positions after the batch's last EOT cannot change any position up to it (the causal mask, or for a
        bidirectional tower the mask that hides everything after each EOT), so the sequence is cut there:
        exactly the same features, a fraction of the compute for short captions in a 77-token context.
        """
        ids = self.cut_ids(ids)
        return self.text_head(self.text_trunk(ids, 0), ids, 0)

    @staticmethod
    def cut_ids(ids: torch.Tensor) -> torch.Tensor:
        n = int(ids.argmax(dim=-1).max().item()) + 1 if ids.shape[0] else ids.shape[1]
        return ids[:, :n]

    def _text_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """The causal mask of a causal text tower; for a bidirectional one (`no_causal_mask`), a mask that hides
        every position after each caption's EOT, so padding and the batch's other captions never change a token."""
        n = ids.shape[1]
        mask = self.model.attn_mask
        if mask is not None:
            return mask[:n, :n]
        after_eot = torch.arange(n, device=ids.device)[None, :] > ids.argmax(dim=-1)[:, None]  # [B, n] keys
        heads = self.model.transformer.resblocks[0].attn.num_heads
        add = torch.zeros(after_eot.shape, device=ids.device).masked_fill(after_eot, float("-inf"))
        return add[:, None, :].expand(-1, n, -1).repeat_interleave(heads, dim=0)  # [B·heads, n, n]

    def text_trunk(self, ids: torch.Tensor, stop: int) -> torch.Tensor:
        m = self.model
        cast = m.transformer.get_cast_dtype()
        n = ids.shape[1]
        x = m.token_embedding(ids).to(cast) + m.positional_embedding[:n].to(cast)
        return self._run_blocks(m.transformer, x, 0, stop, self._text_mask(ids))

    def text_head(self, x: torch.Tensor, ids: torch.Tensor, start: int) -> TextFeatures:
        m = self.model
        eot = ids.argmax(dim=-1)
        x = self._run_blocks(m.transformer, x, start, None, self._text_mask(ids))
        x = m.ln_final(x)
        proj = m.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else (x @ proj if proj is not None else x)
        rows = torch.arange(ids.shape[0], device=ids.device)
        glob = x[rows, eot]
        n_words = (eot - 1).clamp(min=0)
        width = max(int(n_words.max().item()) if ids.shape[0] else 0, 1)
        words = x[:, 1 : 1 + width]
        mask = torch.arange(width, device=ids.device)[None, :] < n_words[:, None]
        words = F.normalize(words.float(), dim=-1) * mask[..., None]
        return TextFeatures(F.normalize(glob.float(), dim=-1), words, mask)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor) -> ImageFeatures:
        with self._autocast():
            return self.image_features(self.pixels(images))

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> TextFeatures:
        with self._autocast():
            return self.text_features(self.tokenize(texts))

    def train(self, mode: bool = True) -> Backbone:
        self.model.train(mode)
        return self
