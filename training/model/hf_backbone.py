"""A Hugging Face CLIP or SigLIP directory as a backbone, with the same outputs as the open_clip wrapper.

Many users hold their weights in transformers' directory format (`config.json`, `model.safetensors`,
tokenizer files). `--backbone hf:DIR` loads `CLIPModel` or `SiglipModel` from DIR with `local_files_only`,
and this class gives what every other part of finesearch expects from `Backbone`: L2-normalised
joint-space globals, patch tokens and word tokens with their mask, the trunk/head split that training caches,
a fingerprint of the weights, and word pieces with character spans for explanations.

Which projection the tokens get, and why:

* CLIP: the patch tokens are the vision tower's last hidden states with its `post_layernorm` and
  `visual_projection` applied, and the word tokens the text tower's (after `final_layer_norm`) with
  `text_projection`: the same maps that take the CLS and EOS states into the joint space, so a patch and a
  word are compared where the globals are (what open_clip's `output_tokens` gives, and FILIP's choice).
* SigLIP: the vision tower has no projection (its joint space is the tower's width, pooled by an attention
  head): patch tokens are the `post_layernorm` states. The text tower's `head` is the linear map that takes
  the last position into the joint space; the word tokens go through the same `head`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone, BackboneError, BackboneSource, ImageFeatures, TextFeatures, pick_device, pick_dtype

KINDS = ("clip", "siglip")
_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _directory(name: str, pretrained: str | None) -> Path:
    """`hf:DIR`, or a recorded `hf:clip`/`hf:siglip` whose directory is the `pretrained` source."""
    rest = name[3:]
    raw = pretrained if rest in KINDS and pretrained else rest
    path = Path(raw).expanduser()
    if not (path / "config.json").is_file():
        raise BackboneError(f"{path} is not a Hugging Face model directory (no config.json): pass --backbone "
                            "hf:DIR with a directory that CLIPModel/SiglipModel.save_pretrained wrote")
    return path.resolve()


class HFTokenizer:
    """transformers' tokenizer behind open_clip's calling convention: texts → a padded LongTensor of ids."""

    def __init__(self, tokenizer: Any, context_length: int, pad_to_context: bool) -> None:
        self.tok = tokenizer
        self.context_length = context_length
        self.pad_to_context = pad_to_context  # SigLIP was trained on fixed-length, unmasked text
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        probe = tokenizer("a")["input_ids"]
        self.first = 1 if tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id else 0

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.tok(list(texts), padding="max_length" if self.pad_to_context else "longest", truncation=True,
                        max_length=self.context_length, return_tensors="pt")["input_ids"]

    def pieces(self, text: str, n: int) -> list[Any]:
        from .explain import Piece

        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True, truncation=True,
                       max_length=max(n, 1))
        toks = self.tok.convert_ids_to_tokens(enc["input_ids"][:n])
        return [Piece(text[a:b].lower() if b > a else t, (a, b) if b > a else None)
                for t, (a, b) in zip(toks, enc["offset_mapping"][:n], strict=True)]


class HFBackbone(Backbone):
    """CLIPModel or SiglipModel from a local directory (see the module docstring for the token projections)."""

    def __init__(self, model: nn.Module, kind: str, path: Path, tokenizer: Any, image_mean: Any, image_std: Any,
                 device: torch.device, precision: str = "auto") -> None:
        self.model = model.to(device).eval()
        self.kind = kind
        self.name = f"hf:{kind}"
        cfg = model.config
        self.config = json.loads(cfg.to_json_string(use_diff=False))
        self.source = BackboneSource(self.name, str(path), {"format": "transformers"})
        self.device = device
        self.dtype = pick_dtype(device, precision)
        vc, tc = cfg.vision_config, cfg.text_config
        self.image_size = int(vc.image_size)
        self._grid = (self.image_size // int(vc.patch_size),) * 2
        self.mean = torch.tensor(image_mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(image_std, device=device).view(1, 3, 1, 1)
        self.context_length = int(tc.max_position_embeddings)
        self.embed_dim = int(cfg.projection_dim if kind == "clip" else getattr(tc, "projection_size", tc.hidden_size))
        self.tokenizer = HFTokenizer(tokenizer, self.context_length, pad_to_context=kind == "siglip")
        self._fingerprint = None

    @classmethod
    def load(cls, name: str, pretrained: str | None = None, *, device: str | None = None,  # type: ignore[override]
             precision: str = "auto", **_: Any) -> HFBackbone:
        from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # its loading bars and notes are not our users' business
        hf_logging.disable_progress_bar()
        path = _directory(name, pretrained)
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise BackboneError(f"cannot read the model config in {path}: {exc}") from exc
        kind = {"clip": "clip", "siglip": "siglip"}.get(config.model_type)
        if kind is None:
            raise BackboneError(f"{path} holds a {config.model_type!r} model; finesearch reads CLIP and SigLIP "
                                "directories (model_type clip or siglip)")
        model_cls = CLIPModel if kind == "clip" else SiglipModel
        try:
            model = model_cls.from_pretrained(path, local_files_only=True, attn_implementation="eager")
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise BackboneError(f"cannot load the {kind} model or its tokenizer from {path}: {exc}") from exc
        pre = path / "preprocessor_config.json"
        pp = json.loads(pre.read_text()) if pre.is_file() else {}
        mean = pp.get("image_mean") or (_CLIP_MEAN if kind == "clip" else (0.5, 0.5, 0.5))
        std = pp.get("image_std") or (_CLIP_STD if kind == "clip" else (0.5, 0.5, 0.5))
        return cls(model, kind, path, tokenizer, mean, std, pick_device(device), precision)

    # ------------------------------------------------------------- geometry
    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def max_words(self) -> int:
        return self.context_length - self.tokenizer.first - 1

    def word_pieces(self, text: str, n: int) -> list[Any]:
        return self.tokenizer.pieces(text, n)

    @property
    def depth(self) -> int:
        return min(len(self.model.vision_model.encoder.layers), len(self.model.text_model.encoder.layers))

    def unfreeze_parts(self, n: int) -> list[nn.Module | nn.Parameter]:
        m = self.model
        parts: list[nn.Module | nn.Parameter] = [*m.vision_model.encoder.layers[-n:], m.vision_model.post_layernorm,
                                                 *m.text_model.encoder.layers[-n:], m.text_model.final_layer_norm]
        if self.kind == "clip":
            return parts + [m.visual_projection, m.text_projection]
        return parts + [m.text_model.head] + ([m.vision_model.head] if m.vision_model.use_head else [])

    # ------------------------------------------------------------- encoding
    @staticmethod
    def _run_layers(layers: Any, x: torch.Tensor, start: int, stop: int | None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[0] == 0:  # transformers' attention cannot reshape an empty batch; its output is empty too
            return x
        for layer in layers[start:stop]:
            out = layer(x, mask)
            x = out[0] if isinstance(out, tuple) else out
        return x

    def image_trunk(self, pixels: torch.Tensor, stop: int) -> torch.Tensor:
        vm = self.model.vision_model
        x = vm.embeddings(pixels)
        if self.kind == "clip":
            x = vm.pre_layrnorm(x)
        return self._run_layers(vm.encoder.layers, x, 0, stop)

    def image_head(self, x: torch.Tensor, start: int) -> ImageFeatures:
        vm = self.model.vision_model
        x = self._run_layers(vm.encoder.layers, x, start, None)
        if self.kind == "clip":
            x = self.model.visual_projection(vm.post_layernorm(x))
            pooled, tokens = x[:, 0], x[:, 1:]
        else:
            tokens = vm.post_layernorm(x)
            pooled = vm.head(tokens) if vm.use_head else tokens.mean(dim=1)
        return ImageFeatures(F.normalize(pooled.float(), dim=-1), F.normalize(tokens.float(), dim=-1))

    def tokenize(self, texts: Any) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def _ends(self, ids: torch.Tensor) -> torch.Tensor:
        """Each caption's end-of-text position (the first one: the pad token may be the same id)."""
        is_end = ids == self.tokenizer.eos
        return torch.where(is_end.any(dim=1), is_end.int().argmax(dim=1), torch.full_like(ids[:, 0], ids.shape[1]))

    def cut_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if self.kind == "siglip":  # bidirectional and pooled at the last position: every position matters
            return ids
        n = int(self._ends(ids).max().item()) + 1 if ids.shape[0] else ids.shape[1]
        return ids[:, : min(n, ids.shape[1])]

    def _text_mask(self, ids: torch.Tensor) -> torch.Tensor | None:
        if self.kind == "siglip":
            return None
        n = ids.shape[1]
        causal = torch.full((n, n), float("-inf"), device=ids.device).triu(1)
        return causal[None, None].expand(ids.shape[0], 1, n, n)

    def text_trunk(self, ids: torch.Tensor, stop: int) -> torch.Tensor:
        tm = self.model.text_model
        return self._run_layers(tm.encoder.layers, tm.embeddings(input_ids=ids), 0, stop, self._text_mask(ids))

    def text_head(self, x: torch.Tensor, ids: torch.Tensor, start: int) -> TextFeatures:
        tm = self.model.text_model
        x = tm.final_layer_norm(self._run_layers(tm.encoder.layers, x, start, None, self._text_mask(ids)))
        x = self.model.text_projection(x) if self.kind == "clip" else tm.head(x)
        ends = self._ends(ids).clamp(max=ids.shape[1] - 1)
        rows = torch.arange(ids.shape[0], device=ids.device)
        glob = x[rows, ends] if self.kind == "clip" else x[:, -1]
        first = self.tokenizer.first
        n_words = (ends - first).clamp(min=0)
        width = max(int(n_words.max().item()) if ids.shape[0] else 0, 1)
        words = x[:, first: first + width]
        mask = torch.arange(words.shape[1], device=ids.device)[None, :] < n_words[:, None]
        words = F.normalize(words.float(), dim=-1) * mask[..., None]
        return TextFeatures(F.normalize(glob.float(), dim=-1), words, mask)
