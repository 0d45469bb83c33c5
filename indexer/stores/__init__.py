"""Vector stores: Qdrant Edge embedded (default) or a Qdrant server."""

from __future__ import annotations

from pathlib import Path

from .base import IMAGES, TEXTS, Hit, IndexMismatch, StoreError, StoreLocked, VectorStore, point_id

FEATURE_HOMES = ("bank", "qdrant")


def open_store(data_dir: str | Path | None = None, qdrant_url: str | None = None, api_key: str | None = None,
               prefer_grpc: bool = True, prefix: str = "finesearch_", features: str = "bank") -> VectorStore:
    """Qdrant server when a URL is given, else the embedded engine under `data_dir/qdrant`.

    `features`: where the matcher's prepared features live: "bank" (the token bank in the data directory)
    or "qdrant" (a multivector on each point; server mode only)."""
    if features not in FEATURE_HOMES:
        raise StoreError(f"features must be one of {', '.join(FEATURE_HOMES)}, not {features!r}")
    if qdrant_url:
        from .server import ServerStore

        return ServerStore(qdrant_url, api_key=api_key, prefer_grpc=prefer_grpc, prefix=prefix,
                           features=features == "qdrant")
    if features == "qdrant":
        raise StoreError("features=qdrant keeps the matcher features in a Qdrant server: give --qdrant-url "
                         "(the embedded engine keeps them in the token bank)")
    if data_dir is None:
        raise StoreError("either a data directory (embedded Qdrant Edge) or a Qdrant URL is required")
    from .edge import EdgeStore

    return EdgeStore(Path(data_dir) / "qdrant")


__all__ = ["FEATURE_HOMES", "IMAGES", "TEXTS", "Hit", "IndexMismatch", "StoreError", "StoreLocked", "VectorStore",
           "open_store", "point_id"]
