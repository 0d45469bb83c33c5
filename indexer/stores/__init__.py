"""Vector stores: Qdrant Edge embedded (default) or a Qdrant server."""

from __future__ import annotations

from pathlib import Path

from .base import IMAGES, TEXTS, Hit, IndexMismatch, StoreError, StoreLocked, VectorStore, point_id


def open_store(data_dir: str | Path | None = None, qdrant_url: str | None = None, api_key: str | None = None,
               prefer_grpc: bool = True, prefix: str = "finesearch_") -> VectorStore:
    """Qdrant server when a URL is given, else the embedded engine under `data_dir/qdrant`."""
    if qdrant_url:
        from .server import ServerStore

        return ServerStore(qdrant_url, api_key=api_key, prefer_grpc=prefer_grpc, prefix=prefix)
    if data_dir is None:
        raise StoreError("either a data directory (embedded Qdrant Edge) or a Qdrant URL is required")
    from .edge import EdgeStore

    return EdgeStore(Path(data_dir) / "qdrant")


__all__ = ["IMAGES", "TEXTS", "Hit", "IndexMismatch", "StoreError", "StoreLocked", "VectorStore", "open_store",
           "point_id"]
