"""One way in for images, whoever sends them.

An upload (`POST /v1/images`) and a bulk job's archive pass the same checks in the same order (bytes, then
content type, then the decoder's header probe for format and pixels), land in the same blob store, and
become the same `ImageItem` for the indexer. Before this module each caller had its own copy of that
sequence, and the two drifted (messages, which limit is checked first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.blobs import BlobStore
from indexer.items import ImageItem
from training.model.images import ImageRejected, probe_image

from .config import Settings


@dataclass
class Arrival:
    """An image as it arrives: bytes from an upload, or a file an archive was extracted to (read only once it
    passes the byte limit, so an oversized file is never loaded)."""

    name: str  # the upload's filename or the path inside the archive: what a refusal names
    source: bytes | Path
    size: int | None = None  # bytes as received, when `source` holds only the first ones; else measured
    content_type: str | None = None  # as the client declared it (uploads only)
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # payload fields the caller adds (a job's id)


@dataclass
class Admitted:
    items: list[ImageItem]  # for the indexer, in arrival order
    positions: list[int]  # the arrival each item came from
    refused: dict[int, ImageRejected]  # arrival → why it was refused before indexing


def admit(arrival: Arrival, settings: Settings, blobs: BlobStore) -> ImageItem:
    """The checks, then the blob store; raises ImageRejected (with its code) for a file that fails one."""
    src = arrival.source
    size = arrival.size if arrival.size is not None else (src.stat().st_size if isinstance(src, Path) else len(src))
    if size > settings.max_image_bytes:
        raise ImageRejected(f"image is {size} bytes, above the limit of {settings.max_image_bytes} "
                            "(max_image_bytes)", "image_too_large")
    ctype = arrival.content_type
    if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
        raise ImageRejected(f"content type {ctype} is not an image", "unsupported_media_type")
    data = src.read_bytes() if isinstance(src, Path) else src
    info = probe_image(data, settings.max_image_pixels)
    digest = blobs.put(data)
    return ImageItem(data=data, id=arrival.id or None, metadata=arrival.metadata,
                     extra={"blob": digest, "content_type": info.mime, "filename": arrival.name, **arrival.extra})


def admit_all(arrivals: list[Arrival], settings: Settings, blobs: BlobStore) -> Admitted:
    out = Admitted([], [], {})
    for pos, arrival in enumerate(arrivals):
        try:
            out.items.append(admit(arrival, settings, blobs))
        except ImageRejected as exc:
            out.refused[pos] = exc
            continue
        out.positions.append(pos)
    return out
