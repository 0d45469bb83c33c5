"""Where an open_clip backbone's architecture and weights come from, and what identifies them.

Weights are random on purpose, a local checkpoint file, or a pretrained tag resolved from the local cache
(downloads only when allowed); each way fails with a message that says what to provide instead, and none
falls back silently to another. Architectures are open_clip's, the project's own (model_configs/), or one
a bundle carries; the fingerprint of architecture + weights is what token features are tied to."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from .defaults import TINY_MODEL

CONFIG_DIR = Path(__file__).with_name("model_configs")
open_clip.add_model_config(CONFIG_DIR)


class BackboneError(RuntimeError):
    """The backbone cannot be built as asked; the message says what to provide instead."""


class _QuietDeliberateInit(logging.Filter):
    """open_clip warns on every random init; ours are always explicit (--from-scratch, bundles)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def random_init(name: str) -> nn.Module:
    """An open_clip model with random weights, asked for on purpose: its warning is filtered from the root
    logger (where open_clip writes it) for this call only, so importing the package changes no logging."""
    quiet = _QuietDeliberateInit()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=None)
    finally:
        root.removeFilter(quiet)


def looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(".") or value.endswith((".bin", ".pt", ".pth", ".safetensors"))


def from_checkpoint(name: str, path: Path) -> nn.Module:
    if not path.is_file():
        raise BackboneError(f"checkpoint file not found: {path} (for {name}); check the path")
    try:
        return open_clip.create_model(name, pretrained=str(path), load_weights=True)
    except Exception as exc:
        raise BackboneError(f"could not load checkpoint {path} into {name}: {exc}") from exc


def from_tag(name: str, tag: str, cache_dir: str | None, allow_download: bool) -> nn.Module:
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        raise BackboneError(
            f"unknown pretrained tag {tag!r} for {name}; known tags: {', '.join(tags) or 'none'}; "
            "or pass a local checkpoint file"
        )
    try:
        with _offline(not allow_download):
            return open_clip.create_model(name, pretrained=tag, cache_dir=cache_dir)
    except Exception as exc:
        import huggingface_hub.constants as hf_constants

        where = cache_dir or hf_constants.HF_HUB_CACHE
        raise BackboneError(
            f"pretrained weights {name}/{tag} are not available locally ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Either copy the open_clip checkpoint into the "
            f"Hugging Face cache at {where} (or --cache-dir), pass the checkpoint file itself as "
            "--pretrained /path/to/open_clip_model.safetensors, or allow downloads (--allow-download, "
            "FINESEARCH_ALLOW_DOWNLOAD=1) on a host with network access"
        ) from exc


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """Make huggingface_hub resolve from its cache only, for the duration of one load."""
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hf_constants

    old = hf_constants.HF_HUB_OFFLINE  # read at call time by huggingface_hub (is_offline_mode), not at import
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Make a config (e.g. one stored in a model bundle) known to open_clip's factory by name."""
    if name in open_clip.list_models():
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


def model_config(name: str) -> dict[str, Any]:
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise BackboneError(
            f"unknown open_clip architecture {name!r}; known ones include "
            f"{', '.join(sorted(open_clip.list_models())[:8])}, ... and {TINY_MODEL}"
        )
    return cfg


def state_fingerprint(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """Identity of a backbone: its architecture and its weights (as fp16, so an fp16 copy matches).

    Token features written with one backbone are meaningless to another; the
    token bank and the index store this and refuse a different one.
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.is_floating_point():
            t = t.to(torch.float16)
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]
