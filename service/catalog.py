"""The items themselves, as the routes add, read and delete them: uploads through the one way in
(service/ingest.py), captions, an item's description, an image's stored bytes, and the index-size gauges.
Searching is the engine's (engine.py); both share one store, indexer and blob store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from indexer.blobs import BlobStore
from indexer.items import TextItem
from indexer.pipeline import Indexer
from indexer.stores import IMAGES, TEXTS, VectorStore

from .config import Settings
from .exceptions import NotFound
from .ingest import Arrival, admit_all
from .metrics import INDEX_SIZE
from .results import describe


class Catalog:
    def __init__(self, settings: Settings, store: VectorStore, indexer: Indexer, blobs: BlobStore) -> None:
        self.settings, self.store, self.indexer, self.blobs = settings, store, indexer, blobs

    def add_images(self, files: list[tuple[str, str | None, bytes]], ids: list[str | None],
                   metadata: dict[str, dict[str, Any]], sizes: list[int] | None = None) -> list[dict[str, Any]]:
        """Index uploaded files; one entry per file, an error entry for each rejected one, and for a file
        sent twice (same content, no ids) the id it shares and `duplicate_of`, the earlier entry's index.

        `sizes` are the files' sizes as received, when `data` holds only the first bytes of a large one."""
        results: list[dict[str, Any] | None] = [None] * len(files)
        arrivals = [Arrival(name, data, sizes[pos] if sizes else None, ctype, ids[pos], metadata.get(name, {}))
                    for pos, (name, ctype, data) in enumerate(files)]
        admitted = admit_all(arrivals, self.settings, self.blobs)
        for pos, exc in admitted.refused.items():
            results[pos] = {"filename": files[pos][0], "id": None, "error": {"code": exc.code, "message": str(exc)}}
        items, positions = admitted.items, admitted.positions
        if items:
            summary = self.indexer.index_images(items, skip_existing=False)
            for k, pos in enumerate(positions):
                err = summary.errors.get(k)
                results[pos] = ({"filename": files[pos][0], "id": None,
                                 "error": {"code": err.code, "message": err.reason}} if err else
                                {"filename": files[pos][0], "id": summary.ids[k], "error": None})
                if k in summary.duplicates:
                    results[pos]["duplicate_of"] = positions[summary.duplicates[k]]  # type: ignore[index]
        self.refresh_gauges()
        return results  # type: ignore[return-value]

    def add_texts(self, items: list[TextItem]) -> list[dict[str, Any]]:
        summary = self.indexer.index_texts(items, skip_existing=False, max_chars=self.settings.max_text_chars)
        self.refresh_gauges()
        out = []
        for k in range(len(items)):
            err = summary.errors.get(k)
            out.append({"id": None, "error": {"code": err.code, "message": err.reason}} if err
                       else {"id": summary.ids[k], "error": None})
            if k in summary.duplicates:
                out[-1]["duplicate_of"] = summary.duplicates[k]
        return out

    def get(self, collection: str, item_id: str) -> dict[str, Any]:
        found = self.store.retrieve(collection, [item_id])
        if item_id not in found:
            raise NotFound(f"no {collection[:-1]} with id {item_id!r}", "not_found")
        payload = found[item_id][0]
        extra = {k: payload.get(k) for k in ("content_type", "filename", "bytes", "sha256", "format") if k in payload}
        return describe((item_id, payload), collection) | extra

    def delete(self, collection: str, item_id: str) -> None:
        if self.indexer.delete(collection, [item_id]) == 0:
            raise NotFound(f"no {collection[:-1]} with id {item_id!r}", "not_found")
        self.refresh_gauges()

    def content(self, item_id: str) -> tuple[str, str]:
        """(file path, media type) of an image's stored bytes."""
        found = self.store.retrieve(IMAGES, [item_id])
        if item_id not in found:
            raise NotFound(f"no image with id {item_id!r}", "not_found")
        p = found[item_id][0]
        if p.get("blob") and self.blobs.exists(p["blob"]):
            return str(self.blobs.path(p["blob"])), p.get("content_type") or "application/octet-stream"
        uri = p.get("uri")
        if uri and not uri.startswith(("http://", "https://")):
            path = Path(uri)
            if path.is_file():
                return str(path), Image.MIME.get(p.get("format", ""), "application/octet-stream")
        raise NotFound(f"the original bytes of image {item_id!r} are not available on this server", "not_found")

    def refresh_gauges(self) -> dict[str, int]:
        counts = {c: self.store.count(c) for c in (IMAGES, TEXTS)}
        for c, n in counts.items():
            INDEX_SIZE.labels(collection=c).set(n)
        return counts
