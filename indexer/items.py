"""What goes into the index and what comes back from a run: the items (an image with its id, metadata and
payload extras; a caption tied to its image), the per-item failures, the run's summary, and the rules an
item's text and id follow. Every way in (the CLI, uploads, bulk jobs) builds these."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .validation import PayloadLimits

MAX_TEXT_CHARS = PayloadLimits.max_text_chars


@dataclass
class ImageItem:
    """One image to index: from a file (`path`) or from memory (`data`, e.g. an upload)."""

    path: Path | None = None
    data: bytes | None = None
    id: str | None = None  # default: content hash
    uri: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # payload fields set by the caller (blob, content type)


@dataclass
class TextItem:
    text: str
    id: str | None = None  # default: hash of the text
    metadata: dict[str, Any] = field(default_factory=dict)
    image_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # payload fields set by the caller (e.g. a bulk job's id)


@dataclass
class Failure:
    source: str
    reason: str
    code: str = "invalid"


@dataclass
class Summary:
    indexed: int = 0
    skipped: int = 0
    failed: int = 0
    elapsed: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    skips: list[Failure] = field(default_factory=list)  # inputs passed over for a reason the user should see
    ids: list[str | None] = field(default_factory=list)  # per input, in order (skipped ones too); None where it failed
    errors: dict[int, Failure] = field(default_factory=dict)  # input position → why it failed
    duplicates: dict[int, int] = field(default_factory=dict)  # input position → earlier position with the same id

    @property
    def rate(self) -> float:
        return self.indexed / self.elapsed if self.elapsed > 0 else 0.0

    def fail(self, pos: int, failure: Failure) -> None:
        self.failed += 1
        self.failures.append(failure)
        self.errors[pos] = failure
        if pos < len(self.ids):
            self.ids[pos] = None

    def as_dict(self) -> dict[str, Any]:
        return {"indexed": self.indexed, "skipped": self.skipped, "failed": self.failed,
                "elapsed_s": round(self.elapsed, 3), "items_per_s": round(self.rate, 2),
                "failures": [f.__dict__ for f in self.failures], "skips": [f.__dict__ for f in self.skips]}


def metadata_entry(row: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """One metadata.jsonl line → (file key, {"id", "metadata"}): the same format for the CLI and bulk jobs.

    `{"file": ..., "id"?: ..., "metadata": {...}}`, or the other keys of the line as the metadata.
    """
    row = dict(row)
    key = row.pop("file", None) or row.pop("image", None)
    meta = row.pop("metadata", None)
    item_id = row.pop("id", None)
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)  # numeric ids are common in datasets; anything else meets the id rule's check
    return (str(key) if key else None), {"id": item_id, "metadata": meta if isinstance(meta, dict) else row}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_id(text: str) -> str:
    return "t-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def check_text(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    cleaned = " ".join(str(text).split())
    if not cleaned:
        raise ValueError("text is empty")
    if len(cleaned) > max_chars:
        raise ValueError(f"text is {len(cleaned)} characters long, above the limit of {max_chars} (max_text_chars)")
    return cleaned
