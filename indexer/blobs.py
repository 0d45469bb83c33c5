"""Content-addressed originals of uploaded images: `blobs/ab/cdef…` under the data directory.

Content addressing makes re-uploads free and lets several item ids share one file;
`compact` removes blobs that no item references any more.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / digest[:2] / digest[2:]

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def sweep(self, referenced: Iterable[str], grace_s: float = 600.0) -> int:
        """Delete every blob not in `referenced`; returns how many went. Files younger than `grace_s` stay:
        a blob is stored before its item's point exists (and a temp file is in flight), possibly by another
        process sharing the blob directory."""
        keep = set(referenced)
        removed = 0
        cutoff = time.time() - grace_s
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if f.name.startswith(".tmp-") or sub.name + f.name not in keep:
                    try:
                        if f.stat().st_mtime > cutoff:
                            continue
                    except FileNotFoundError:
                        continue
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed
