"""Every setting of every command in one place: flags, then FINESEARCH_* variables, then .env, then defaults.

Modelled on the FastAPI full-stack template's `core/config.py`: one pydantic-settings class. The subcommands
defined in `training` and `indexer` (which may not import this package) leave such options at None, and the
console script fills them from here after parsing (`fill_args`), so a .env file configures `index` exactly as
it configures `serve`. Nothing else in the three packages reads or writes the process environment.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.validation import PayloadLimits
from training.model.defaults import DEMO_BUNDLE, default_model
from training.model.images import DEFAULT_MAX_PIXELS

DEMO_MODEL = DEMO_BUNDLE  # the one rule every command resolves the model by: training/model/defaults.py


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FINESEARCH_", env_file=".env", extra="ignore")

    model: Path | None = Field(None, description="model bundle directory; default: the bundled demo model")
    data_dir: Path = Path("./data")
    backbone: str | None = Field(None, description="serve a stock open_clip backbone without a trained matcher "
                                 "(global-only search), e.g. ViT-B-32; used when no model bundle is given")
    pretrained: str | None = Field(None, description="its weights: a pretrained tag from the local cache, or a "
                                   "checkpoint file")
    cache_dir: str | None = Field(None, description="where pretrained tags are looked up")
    allow_download: bool = Field(False, description="let a pretrained tag missing from the local cache be "
                                 "downloaded (off: an offline host fails fast and says what to copy where)")
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_prefix: str = "finesearch_"
    features: Literal["bank", "qdrant"] = Field(
        "bank", description="where the matcher's prepared features live: the token bank in data_dir, or "
        "(server mode) a multivector on each Qdrant point, so API replicas share no volume (docs/operations.md)")
    blob_dir: Path | None = Field(None, description="uploaded originals (GET /v1/images/{id}/content); default "
                                  "data_dir/blobs")
    device: str = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    host: str = Field("127.0.0.1", description="address `serve` and `demo` listen on")
    port: int = Field(8000, ge=1, le=65535, description="port `serve` and `demo` listen on")
    bank_on_device: bool = Field(False, description="keep token banks resident on the device (GPU)")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads of each model call (default: half the "
                                      "cores, at least 1; measured in docs/benchmarks.md)")
    keep_raw_tokens: bool = Field(True, description="keep each item's raw tokens beside its prepared features, so "
                                  "a new matcher needs `finesearch index reprepare`, not re-encoding")

    api_key: str | None = Field(None, description="when set, writes need 'Authorization: Bearer <key>'")
    auth_reads: bool = Field(False, description="require the API key for reads too")

    max_body_bytes: int = 64 * 1024 * 1024
    max_files: int = 32
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="decoded pixels of one image (decompression "
                                  "bombs are refused from the header, before decoding)")
    max_text_chars: int = Field(PayloadLimits.max_text_chars, ge=1, description="characters of one caption or "
                                                                                "text query")
    max_texts_per_request: int = 1000
    max_limit: int = 100
    max_candidates: int = 1000
    max_offset: int = 1000
    max_archive_bytes: int = 2 * 1024 * 1024 * 1024
    max_archive_files: int = 100_000
    max_concurrent_jobs: int = Field(2, ge=1, description="bulk jobs indexed at the same time")

    # hostile-input bounds: checked before or while parsing, so an oversized request costs almost nothing
    max_json_bytes: int = Field(8 * 1024 * 1024, description="JSON request bodies (searches, /v1/texts)")
    max_json_depth: int = Field(32, ge=4, description="nesting of arrays/objects in any JSON body")
    max_json_items: int = Field(1000, ge=1, description="elements of any one JSON array or object (route-specific "
                                                         "limits such as max_texts_per_request come first)")
    # one definition for the service and the CLI: the indexer's defaults (indexer/validation.py)
    max_metadata_depth: int = Field(PayloadLimits.max_metadata_depth, ge=1,
                                    description="nesting inside one item's metadata object")
    max_metadata_keys: int = Field(PayloadLimits.max_metadata_keys, ge=1,
                                   description="object keys, at every level, in one item's metadata")
    max_metadata_bytes: int = Field(PayloadLimits.max_metadata_bytes, ge=2,
                                    description="one item's metadata as compact UTF-8 JSON")
    max_filter_fields: int = Field(16, ge=1, description="fields in one search filter")
    max_filter_values: int = Field(256, ge=1, description="values listed for one filter field")
    max_id_chars: int = Field(PayloadLimits.max_id_chars, ge=1, description="length of an item id")

    batch_window_ms: float = Field(2.0, description="micro-batching window; 0 turns micro-batching off")
    encode_batch: int = 64
    rerank_batch: int = 16  # queries per matcher call
    index_batch: int = 32
    decode_workers: int = 4

    def resolved_model(self) -> Path:
        return default_model(self.model)

    def fill_args(self, args: argparse.Namespace) -> None:
        """Give every option left at None whose name is a setting this setting's value; attach `args.settings`.

        A flag given on the command line is never None, so flags win; `--to-api-key` (migrate's target) is the
        one option named otherwise.
        """
        for name, value in vars(args).copy().items():
            setting = "qdrant_api_key" if name == "to_api_key" else name
            if value is None and setting in type(self).model_fields:
                setattr(args, name, getattr(self, setting))
        args.settings = self

    def export_environment(self, names: list[str]) -> None:
        """Write these settings as FINESEARCH_* variables, for uvicorn's worker processes: they are started
        with an import string, so the environment is the only channel into their own `Settings()`."""
        for name in names:
            value = getattr(self, name)
            if value is not None:
                os.environ[f"FINESEARCH_{name.upper()}"] = str(value)
