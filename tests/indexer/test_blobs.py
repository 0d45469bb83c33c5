"""Blob sweeping keeps what items reference, and anything young enough to be an upload in flight."""

from __future__ import annotations

import os
import time
from pathlib import Path

from indexer.blobs import BlobStore


def test_sweep_removes_old_orphans_only(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    kept, orphan, fresh = blobs.put(b"kept"), blobs.put(b"orphan"), blobs.put(b"just uploaded")
    old = time.time() - 3600
    for digest in (kept, orphan):
        os.utime(blobs.path(digest), (old, old))
    assert blobs.sweep([kept]) == 1  # the old orphan; the fresh one may belong to a point not upserted yet
    assert blobs.exists(kept) and not blobs.exists(orphan) and blobs.exists(fresh)
    assert blobs.sweep([kept], grace_s=0) == 1 and not blobs.exists(fresh)
