"""Model bundles: the directory the training package writes and the service serves.

    config.json             backbone identity + fingerprint, matcher options, training data and metrics
    matcher.safetensors     matcher weights (fp32: they are small)
    backbone.safetensors    backbone weights (fp16) when they were trained here; otherwise the
                            backbone is re-created from its open_clip name + pretrained tag/file
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .backbone import Backbone, BackboneError, BackboneSource
from .defaults import STOCK_NOTICE, SYNTHETIC_NOTICE, TINY_MODEL
from .matcher import Matcher, MatcherConfig

BUNDLE_FORMAT = 2
MATCHER_FORMAT = 2  # the oldest bundle format whose matcher this version serves


class BundleError(RuntimeError):
    pass


def package_version() -> str:
    try:
        return version("finesearch")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


@dataclass
class Bundle:
    """A trained model bundle, or a stock backbone alone (`matcher` None: global-only search)."""

    backbone: Backbone
    matcher: Matcher | None
    config: dict[str, Any]
    path: Path | None = None

    @classmethod
    def stock(cls, backbone: Backbone) -> Bundle:
        return cls(backbone, None, {"name": backbone.name})

    @property
    def id(self) -> str:
        return f"{self.config.get('name', 'model')}@{self.backbone.fingerprint[:12]}"

    @property
    def notice(self) -> str | None:
        """What a user must know before trusting results, said by `/v1/stats` and the page."""
        if self.matcher is None:
            return STOCK_NOTICE.format(name=self.backbone.name)
        return SYNTHETIC_NOTICE if self.synthetic else None

    @property
    def synthetic(self) -> bool:
        """The tiny demo backbone: it knows only the synthetic shapes it was trained on."""
        return self.backbone.name == TINY_MODEL


def save_bundle(out: str | Path, backbone: Backbone, matcher: Matcher, *, include_backbone: bool,
                extra: dict[str, Any] | None = None, name: str | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in matcher.state_dict().items()}
    save_file(state, str(out / "matcher.safetensors"))
    weights = None
    if include_backbone:
        bstate = {k: v.detach().cpu().to(torch.float16).contiguous()
                  for k, v in backbone.model.state_dict().items()}
        save_file(bstate, str(out / "backbone.safetensors"))
        weights = "backbone.safetensors"
    elif (out / "backbone.safetensors").exists():
        (out / "backbone.safetensors").unlink()
    config = {
        "format": BUNDLE_FORMAT,
        "finesearch_version": package_version(),
        "name": name or out.name,
        "backbone": {
            "name": backbone.name,
            "pretrained": backbone.source.pretrained,
            "source": backbone.source.extra,
            "model_config": backbone.config,
            "fingerprint": backbone.fingerprint,
            "weights": weights,
            "embed_dim": backbone.embed_dim,
            "image_size": backbone.image_size,
            "context_length": backbone.context_length,
        },
        "matcher": matcher.config.to_dict(),
        **(extra or {}),
    }
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    tmp.replace(out / "config.json")
    return out


def read_bundle_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise BundleError(f"{path} is not a model bundle: {cfg_file} is missing")
    config = json.loads(cfg_file.read_text())
    fmt = config.get("format")
    if not isinstance(fmt, int) or fmt > BUNDLE_FORMAT:
        raise BundleError(
            f"{path} is bundle format {fmt} from finesearch {config.get('finesearch_version')}; this finesearch "
            f"({package_version()}) reads format {BUNDLE_FORMAT} and older: upgrade finesearch"
        )
    return config


def load_backbone(path: str | Path, device: str | None = None, precision: str = "auto",
                  cache_dir: str | None = None, allow_download: bool = False) -> Backbone:
    """A bundle's backbone alone (e.g. to train a new matcher on it); its fingerprint must match the record."""
    path = Path(path)
    config = read_bundle_config(path)
    b = config["backbone"]
    if b.get("weights"):
        wfile = path / b["weights"]
        if not wfile.is_file():
            raise BundleError(f"{path}: backbone weights {wfile.name} are missing from the bundle")
        state = load_file(str(wfile))
        try:
            backbone = Backbone.from_state(b["name"], b["model_config"], state,
                                           BackboneSource(b["name"], b.get("pretrained"), b.get("source") or {}),
                                           device=device, precision=precision)
        except BackboneError as exc:
            raise BundleError(f"{path}: {exc}") from exc
    else:
        if not b.get("pretrained"):
            raise BundleError(f"{path}: the bundle names no backbone weights and no pretrained source")
        backbone = Backbone.load(b["name"], b["pretrained"], device=device, precision=precision,
                                 cache_dir=cache_dir, allow_download=allow_download)
    if backbone.fingerprint != b["fingerprint"]:
        raise BundleError(
            f"{path}: backbone {b['name']} / {b.get('pretrained')} loaded with fingerprint {backbone.fingerprint}, "
            f"but the matcher was trained on {b['fingerprint']}: the weights differ from those used in training"
        )
    return backbone


def load_bundle(path: str | Path, device: str | None = None, precision: str = "auto",
                cache_dir: str | None = None, allow_download: bool = False) -> Bundle:
    """Ready encoders + matcher. The backbone's fingerprint must equal the one recorded at training."""
    path = Path(path)
    config = read_bundle_config(path)
    if config["format"] < MATCHER_FORMAT:
        raise BundleError(
            f"{path} holds a matcher of bundle format {config['format']} (finesearch "
            f"{config.get('finesearch_version')}), which this finesearch no longer serves. Its backbone is still "
            f"usable: retrain the matcher with `finesearch train ... --backbone-from {path}`"
        )
    backbone = load_backbone(path, device, precision, cache_dir, allow_download)
    mfile = path / "matcher.safetensors"
    if not mfile.is_file():
        raise BundleError(f"{path}: matcher.safetensors is missing")
    matcher = Matcher(MatcherConfig.from_dict(config["matcher"]))
    state = load_file(str(mfile))
    expected = set(matcher.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise BundleError(f"{path}: matcher weights do not fit its config: missing {sorted(missing)}, "
                          f"unexpected {sorted(unexpected)}")
    matcher.load_state_dict(state)
    matcher.to(backbone.device).eval()
    return Bundle(backbone, matcher, config, path)
