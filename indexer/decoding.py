"""The read and decode stages of the batch pipeline (indexer/pipeline.py), on worker threads.

A batch is read and checked (id rule, metadata bounds), deduplicated (by id, and by content hash against
what the store holds), then decoded to model-input pixels; each item that fails becomes a `Failure` for
the summary instead of an exception. `prefetch` runs the next batch's stages while the current one is
encoded (Pillow and torch both release the GIL).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.model.images import ImageRejected, load_with_info

from .items import Failure, ImageItem, TextItem, sha256_hex
from .stores import VectorStore
from .validation import PayloadLimits, PayloadRejected, check_id, check_metadata

# (caller's position, item, bytes, id, sha256) of an item read and due for decoding
_Read = tuple[int, ImageItem, bytes, str, str]


@dataclass
class DecodedBatch:
    ids: list[str]
    pixels: np.ndarray | None  # [B, S, S, 3] uint8
    payloads: list[dict[str, Any]]
    positions: list[int]  # index of each prepared item in the caller's input order
    skipped: list[tuple[int, str]]  # (position, id): already stored, or the same id earlier in this call
    failures: list[tuple[int, Failure]]


def check_item(item: ImageItem | TextItem, limits: PayloadLimits) -> None:
    """The id rule and the metadata bounds (indexer/validation.py), before any byte is read or written."""
    if item.id is not None:
        check_id(item.id, limits.max_id_chars)
    check_metadata(item.metadata, limits)


def _read(item: ImageItem, limits: PayloadLimits) -> tuple[bytes, str, str] | Failure:
    """(bytes, id, sha256): the digest is both the default id and the payload's checksum."""
    try:
        check_item(item, limits)
        data = item.data if item.data is not None else Path(item.path).read_bytes()  # type: ignore[arg-type]
    except PayloadRejected as exc:
        return Failure(str(item.path or item.id or "upload"), str(exc), exc.code)
    except OSError as exc:
        return Failure(str(item.path or item.id), f"cannot read file: {exc.strerror or exc}", "unreadable")
    digest = sha256_hex(data)
    return data, item.id or digest[:32], digest


def read_batch(pool: ThreadPoolExecutor, batch: Sequence[tuple[int, ImageItem]], store: VectorStore | None,
               collection: str, seen: dict[str, int], hashes: dict[str, str], limits: PayloadLimits
               ) -> tuple[list[_Read], list[tuple[int, str]], list[tuple[int, Failure]]]:
    """Read and check one batch → (to decode, skipped, failures). With a `store` (skip existing), a photo
    already indexed under another id (same content hash: `index images` after `index dataset`, a bulk job
    over the same photos) is not stored again: it is skipped under the id it already has, so captions link
    to that one item. `seen` and `hashes` carry ids and digests across the batches of one call."""
    reads = list(pool.map(lambda pair: _read(pair[1], limits), batch))
    ids = [r[1] for r in reads if not isinstance(r, Failure)]
    known = store.existing(collection, ids) if store is not None else set()
    if store is not None:
        fresh = [r[2] for r in reads if not isinstance(r, Failure) and r[1] not in known and r[1] not in seen
                 and r[2] not in hashes]
        hashes.update(store.ids_where(collection, "sha256", fresh) if fresh else {})
    todo: list[_Read] = []
    skipped: list[tuple[int, str]] = []
    failures: list[tuple[int, Failure]] = []
    for (pos, item), r in zip(batch, reads, strict=True):
        if isinstance(r, Failure):
            failures.append((pos, r))
        elif r[1] in known or r[1] in seen:
            skipped.append((pos, r[1]))
        elif store is not None and hashes.get(r[2], r[1]) != r[1]:
            skipped.append((pos, hashes[r[2]]))  # the same photo under the id it already has
        else:
            seen[r[1]] = pos
            hashes.setdefault(r[2], r[1])
            todo.append((pos, item, *r))
    return todo, skipped, failures


def _decode(item: ImageItem, data: bytes, image_size: int, max_pixels: int
            ) -> tuple[np.ndarray, dict[str, Any]] | Failure:
    try:
        arr, info = load_with_info(data, image_size, max_pixels)
    except ImageRejected as exc:
        return Failure(str(item.path or item.id or "upload"), str(exc), exc.code)
    except Exception as exc:
        return Failure(str(item.path or item.id or "upload"), f"cannot decode image: {exc}", "invalid_image")
    return arr, {"width": info.width, "height": info.height, "format": info.format}


def decode_batch(pool: ThreadPoolExecutor, todo: list[_Read], image_size: int, max_pixels: int,
                 skipped: list[tuple[int, str]], failures: list[tuple[int, Failure]]) -> DecodedBatch:
    """Decode what `read_batch` kept, with each item's payload; an image that fails to decode joins the
    failures."""
    decoded = list(pool.map(lambda e: _decode(e[1], e[2], image_size, max_pixels), todo))
    out_ids, pixels, payloads, positions = [], [], [], []
    for (pos, item, data, iid, digest), d in zip(todo, decoded, strict=True):
        if isinstance(d, Failure):
            failures.append((pos, d))
            continue
        arr, info = d
        out_ids.append(iid)
        pixels.append(arr)
        positions.append(pos)
        payloads.append({
            "kind": "image", "uri": item.uri or (str(item.path.resolve()) if item.path else None),
            "sha256": digest, "bytes": len(data), **info,
            "metadata": dict(item.metadata), **item.extra,
        })
    return DecodedBatch(out_ids, np.stack(pixels) if pixels else None, payloads, positions, skipped, failures)


def prefetch(gen: Iterator[DecodedBatch] | Iterable[DecodedBatch], depth: int) -> Iterator[DecodedBatch]:
    """Run a generator on a background thread, `depth` items ahead of the consumer."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    sentinel = object()
    stop = threading.Event()

    def run() -> None:
        try:
            for item in gen:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:
            q.put(exc)
        finally:
            q.put(sentinel)

    t = threading.Thread(target=run, name="prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is sentinel:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)
