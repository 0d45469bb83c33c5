"""Append-only, memory-mapped store of per-item token features (patches or words).

Why not Qdrant multivectors: turning 100 candidates x 49 x 512 floats from
Qdrant into an array costs hundreds of milliseconds per query; a gather from a
memory-mapped fp16 file (or a GPU-resident copy) is well under one.

Layout of a bank directory:

    bank.json                          backbone fingerprint, dim, format version
    writers/<n>                        claimed exclusively, one per writing process
    seg-w<n>-<seq>.safetensors         tokens [T,d] fp16, offsets [n+1] i64, rows [n] i64
                                       (+ extras [n,e] f32: per-item values, e.g. a caption's LDA weights)
    tomb-w<n>.i64                      deleted row ids, appended by writer n

Row ids are stable for the life of an item, across compaction:
row = (writer << 32) | per-writer counter. A second bank can hold other features
of the same items under the same row ids (`append(..., rows=...)`): the raw
tokens and the matcher's prepared features are two banks with one numbering. Segments are written to a temp name
and renamed, so a crash leaves either a whole segment or none. Several writers
(indexer workers, API replicas on a shared volume) never touch the same file;
readers pick up new segments with `refresh()`.

Longer than the 350 lines the project aims for: a TokenBank is one lock-guarded state (its segments, the
row index, tombstones and writer claims) that every method reads or changes; one segment file's reading
and writing is segments.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .segments import Segment, TokenBankError, read_segment, write_segment

FORMAT_VERSION = 1
_SEG_RE = re.compile(r"^seg-w(\d+)-(\d+)\.safetensors$")
_TOMB_RE = re.compile(r"^tomb-w(\d+)\.i64$")
#: Compaction writes segments of at most this many tokens (~256 MB at d=512 fp16).
COMPACT_SEGMENT_TOKENS = 256 * 1024 * 1024 // (2 * 512)


class BackboneMismatch(TokenBankError):
    pass


@dataclass
class Fetched:
    """Live rows' features, gathered in one consistent step."""

    tokens: torch.Tensor  # [k, Lmax, d] fp16, zero padded
    mask: torch.Tensor  # [k, Lmax] bool
    extras: torch.Tensor | None  # [k, e] float32, for a bank with extras
    kept: np.ndarray  # indices into the requested rows of those that were live


class TokenBank:
    """Ragged fp16 token sequences addressed by stable row ids; gather is one vectorised operation."""

    def __init__(self, root: str | Path, dim: int, fingerprint: str, device: str | torch.device | None = None,
                 extras_dim: int = 0) -> None:
        self.root = Path(root)
        self.dim = dim
        self.extras_dim = extras_dim
        self.fingerprint = fingerprint
        self.device = torch.device(device) if device is not None else None
        self._lock = threading.RLock()
        self._writer: int | None = None
        self._seq = 0
        self._counter = 0
        self._segments: dict[str, Segment] = {}
        self._tomb_sizes: dict[str, int] = {}
        self._dead: set[int] = set()
        self._on_device: dict[str, torch.Tensor] = {}
        self._bind()
        self.refresh()

    # ------------------------------------------------------------------ setup
    def _bind(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "writers").mkdir(exist_ok=True)
        manifest = self.root / "bank.json"
        info = {"format": FORMAT_VERSION, "dim": self.dim, "fingerprint": self.fingerprint, "dtype": "float16",
                "extras": self.extras_dim}
        if manifest.is_file():
            found = json.loads(manifest.read_text())
            if found.get("format", 0) > FORMAT_VERSION:
                raise TokenBankError(f"{self.root} was written by a newer finesearch (format {found['format']})")
            if found["fingerprint"] != self.fingerprint:
                raise BackboneMismatch(
                    f"token bank {self.root} holds features of backbone {found['fingerprint']}, "
                    f"not {self.fingerprint}: use the model it was built with, or index into a new data directory"
                )
            if found["dim"] != self.dim:
                raise BackboneMismatch(f"token bank {self.root} holds {found['dim']}-d tokens, not {self.dim}-d")
            if found.get("extras", 0) != self.extras_dim:
                raise BackboneMismatch(f"token bank {self.root} holds {found.get('extras', 0)} extras per item, "
                                       f"not {self.extras_dim}")
            return
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        try:
            os.link(tmp, manifest)  # atomic create-if-absent: two first writers cannot both win
        except FileExistsError:
            tmp.unlink()
            self._bind()
            return
        tmp.unlink()

    def _claim_writer(self) -> int:
        n = len(os.listdir(self.root / "writers"))
        while True:
            try:
                fd = os.open(self.root / "writers" / str(n), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                n += 1
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            if n >= 2**31:
                raise TokenBankError("writer numbers exhausted; compact into a new bank")
            return n

    # ---------------------------------------------------------------- reading
    def refresh(self) -> None:
        """Pick up segments and tombstones written by other processes; drop compacted-away segments."""
        with self._lock:
            names = set()
            changed = False
            for entry in os.scandir(self.root):
                if _SEG_RE.match(entry.name):
                    names.add(entry.name)
                    if entry.name not in self._segments:
                        self._segments[entry.name] = read_segment(Path(entry.path))
                        changed = True
                elif _TOMB_RE.match(entry.name):
                    size = entry.stat().st_size // 8 * 8
                    seen = self._tomb_sizes.get(entry.name, 0)
                    if size > seen:
                        with open(entry.path, "rb") as fh:
                            fh.seek(seen)
                            self._dead.update(np.frombuffer(fh.read(size - seen), dtype=np.int64).tolist())
                        self._tomb_sizes[entry.name] = size
                        changed = True
            for gone in set(self._segments) - names:
                del self._segments[gone]
                changed = True
            if changed or not hasattr(self, "_rows"):
                self._rebuild()

    def _rebuild(self) -> None:
        names = sorted(self._segments)
        rows, seg, start, length, extras = [], [], [], [], []
        for i, name in enumerate(names):
            s = self._segments[name]
            if self.extras_dim:
                if s.extras is None or s.extras.shape != (len(s.rows), self.extras_dim):
                    raise TokenBankError(f"{s.path}: expected extras [{len(s.rows)}, {self.extras_dim}]")
                extras.append(s.extras)
            rows.append(s.rows)
            seg.append(np.full(len(s.rows), i, dtype=np.int32))
            start.append(s.offsets[:-1])
            length.append(np.diff(s.offsets))
        self._names = names
        rows_a = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        order = np.argsort(rows_a, kind="stable")
        rows_a = rows_a[order]
        keep = np.ones(len(rows_a), dtype=bool)
        if len(rows_a):
            keep[1:] = rows_a[1:] != rows_a[:-1]  # a row present twice (mid-compaction) is the same data
        if self._dead:
            keep &= ~np.isin(rows_a, np.fromiter(self._dead, dtype=np.int64, count=len(self._dead)))
        sel = order[keep]
        self._rows = rows_a[keep]
        self._seg = (np.concatenate(seg) if seg else np.zeros(0, np.int32))[sel]
        self._start = (np.concatenate(start) if start else np.zeros(0, np.int64))[sel]
        self._len = (np.concatenate(length) if length else np.zeros(0, np.int64))[sel]
        self._extras = (np.concatenate(extras)[sel] if extras else np.zeros((len(sel), self.extras_dim), np.float32))
        if self.device is not None:  # copy new segments to the device once; forget compacted ones
            for gone in set(self._on_device) - set(names):
                del self._on_device[gone]
            for name in names:
                if name not in self._on_device:
                    self._on_device[name] = torch.from_numpy(np.array(self._segments[name].tokens)).to(self.device)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, row: int) -> bool:
        i = np.searchsorted(self._rows, row)
        return bool(i < len(self._rows) and self._rows[i] == row)

    def lengths(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._len[self._locate(np.asarray(rows, dtype=np.int64))]

    def _locate(self, rows: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._rows, rows)
        pos_c = np.minimum(pos, max(len(self._rows) - 1, 0))
        bad = (pos >= len(self._rows)) | (self._rows[pos_c] != rows) if len(self._rows) else np.ones(len(rows), bool)
        if bad.any():
            raise KeyError(f"token bank has no live row(s) {rows[bad][:10].tolist()}")
        return pos_c

    def live(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Boolean mask: which of `rows` are live now."""
        rows = np.asarray(rows, dtype=np.int64)
        with self._lock:
            if not len(self._rows):
                return np.zeros(len(rows), dtype=bool)
            pos = np.minimum(np.searchsorted(self._rows, rows), len(self._rows) - 1)
            return self._rows[pos] == rows

    def gather_live(self, rows: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(tokens, mask, kept): `gather` of the rows that are live, with `kept` the indices into `rows`."""
        f = self.fetch(rows)
        return f.tokens, f.mask, f.kept

    def fetch(self, rows: Sequence[int] | np.ndarray) -> Fetched:
        """The live rows among `rows`, with their extras.

        One consistent step under the bank's lock: a row tombstoned by a concurrent replace or delete
        between a search's recall and this call is dropped, never a KeyError. Unknown rows trigger one
        refresh first (another process may have written them).
        """
        rows = np.asarray(rows, dtype=np.int64)
        with self._lock:
            ok = self.live(rows)
            if not ok.all():
                self.refresh()
                ok = self.live(rows)
            kept = np.nonzero(ok)[0]
            pos = self._locate(rows[kept])
            tokens, mask = self._gather_located(pos)
            extras = torch.from_numpy(self._extras[pos]).to(tokens.device) if self.extras_dim else None
            return Fetched(tokens, mask, extras, kept)

    def live_rows(self) -> np.ndarray:
        """Every live row id, sorted."""
        with self._lock:
            return self._rows.copy()

    def gather(self, rows: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [k, Lmax, d] fp16, mask [k, Lmax] bool) in the order of `rows`.

        Unknown rows first trigger one refresh (another process may have written them).
        """
        rows = np.asarray(rows, dtype=np.int64)
        with self._lock:
            try:
                pos = self._locate(rows)
            except KeyError:
                self.refresh()
                pos = self._locate(rows)
            return self._gather_located(pos)

    def _gather_located(self, pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            seg, start, ln = self._seg[pos], self._start[pos], self._len[pos]
            k = len(pos)
            lmax = int(ln.max()) if k else 0
            ar = np.arange(lmax, dtype=np.int64)
            mask = ar[None, :] < ln[:, None]
            idx = np.where(mask, start[:, None] + ar[None, :], start[:, None])  # padding reads a valid token
            # a row without tokens reads nothing: its segment may hold no token at all to pad with
            has = ln > 0
            if self.device is not None:
                out_t = torch.empty((k, lmax, self.dim), dtype=torch.float16, device=self.device)
                for s in np.unique(seg[has]):  # one index_select per segment touched, not per item
                    sel = np.nonzero((seg == s) & has)[0]
                    src = self._on_device[self._names[s]]
                    flat = torch.from_numpy(idx[sel].reshape(-1)).to(self.device)
                    out_t[torch.from_numpy(sel).to(self.device)] = src.index_select(0, flat).view(len(sel), lmax,
                                                                                                  self.dim)
                m = torch.from_numpy(mask).to(self.device)
                return out_t.masked_fill(~m[..., None], 0), m
            out = np.empty((k, lmax, self.dim), dtype=np.float16)
            for s in np.unique(seg[has]):  # one fancy-index per segment touched, not per item
                sel = (seg == s) & has
                out[sel] = self._segments[self._names[s]].tokens[idx[sel]]
            out[~mask] = 0
            return torch.from_numpy(out), torch.from_numpy(mask)

    # ---------------------------------------------------------------- writing
    def reserve(self, n: int) -> np.ndarray:
        """n fresh row ids of this bank's numbering, without storing anything under them here (the features
        go to another bank; see `append(rows=...)`)."""
        with self._lock:
            if self._writer is None:
                self._writer = self._claim_writer()
            rows = (np.int64(self._writer) << np.int64(32)) + np.arange(self._counter, self._counter + n,
                                                                         dtype=np.int64)
            self._counter += n
            return rows

    def append(self, tokens: torch.Tensor | np.ndarray, lengths: Sequence[int] | np.ndarray,
               ids: Sequence[str] | None = None, rows: np.ndarray | None = None,
               extras: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
        """Store a batch of padded sequences [B, L, d] (first `lengths[i]` kept); returns their row ids.

        `rows`: ids reserved from another bank (the same items' other features), instead of fresh ones.
        `extras` [B, e]: per-item values for a bank opened with `extras_dim=e`.
        Durable when it returns (fsync + atomic rename): callers write Qdrant only after this.
        """
        arr = tokens.detach().to("cpu", torch.float16).numpy() if isinstance(tokens, torch.Tensor) else \
            np.asarray(tokens, dtype=np.float16)
        lens = np.asarray(lengths, dtype=np.int64)
        if arr.ndim != 3 or arr.shape[2] != self.dim or arr.shape[0] != len(lens):
            raise ValueError(f"expected tokens [B, L, {self.dim}] with B lengths, got {arr.shape} and {len(lens)}")
        if (lens < 0).any() or (lens > arr.shape[1]).any():
            raise ValueError("lengths must lie in [0, L]")
        ext = None
        if self.extras_dim:
            if extras is None:
                raise ValueError(f"this bank keeps {self.extras_dim} extras per item: pass extras [B, e]")
            ext = (extras.detach().to("cpu", torch.float32).numpy() if isinstance(extras, torch.Tensor)
                   else np.asarray(extras, dtype=np.float32))
            if ext.shape != (len(lens), self.extras_dim):
                raise ValueError(f"expected extras [{len(lens)}, {self.extras_dim}], got {ext.shape}")
        elif extras is not None:
            raise ValueError("this bank keeps no extras")
        mask = np.arange(arr.shape[1])[None, :] < lens[:, None]
        flat = np.ascontiguousarray(arr[mask])
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        with self._lock:
            if rows is None:
                rows = self.reserve(len(lens))
            else:
                rows = np.asarray(rows, dtype=np.int64)
                if rows.shape != (len(lens),):
                    raise ValueError(f"expected {len(lens)} row ids, got {rows.shape}")
                if self._writer is None:
                    self._writer = self._claim_writer()
            self._write_segment(flat, offsets, rows, ids, ext)
        return rows

    def _write_segment(self, flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray,
                       ids: Sequence[str] | None, extras: np.ndarray | None = None) -> Path:
        assert self._writer is not None
        name = f"seg-w{self._writer:06d}-{self._seq:08d}.safetensors"
        self._seq += 1
        path = write_segment(self.root / name, flat.reshape(-1, self.dim), offsets, rows, self.fingerprint, ids,
                             extras)
        self._segments[name] = read_segment(path)
        self._rebuild()
        return path

    def delete(self, rows: Iterable[int]) -> None:
        """Tombstone rows: gathers stop returning them at once, the bytes go at the next compaction."""
        arr = np.fromiter((int(r) for r in rows), dtype=np.int64)
        if not len(arr):
            return
        with self._lock:
            if self._writer is None:
                self._writer = self._claim_writer()
            name = f"tomb-w{self._writer:06d}.i64"
            with open(self.root / name, "ab") as fh:
                fh.write(arr.tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            self._tomb_sizes[name] = self._tomb_sizes.get(name, 0) + arr.nbytes
            self._dead.update(arr.tolist())
            self._rebuild()

    def compact(self, live: Iterable[int] | None = None) -> dict[str, int]:
        """Rewrite live rows into fresh segments and remove the old files.

        `live`, when given, also drops rows that nothing references any more
        (orphans of a crash between the feature write and the Qdrant upsert).
        """
        with open(self.root / "compact.lock", "w") as lock_fh:
            fcntl.flock(lock_fh, fcntl.LOCK_EX)
            with self._lock:
                self.refresh()
                if self._writer is None:
                    self._writer = self._claim_writer()
                old = list(self._names)
                keep_rows = self._rows
                if live is not None:
                    live_arr = np.fromiter((int(r) for r in live), dtype=np.int64)
                    keep_rows = keep_rows[np.isin(keep_rows, live_arr)]
                before_rows, before_bytes = len(self._rows), self.disk_bytes()
                start = 0
                lens = self.lengths(keep_rows) if len(keep_rows) else np.zeros(0, np.int64)
                written: list[Path] = []
                while start < len(keep_rows):
                    csum = np.cumsum(lens[start:])
                    stop = start + max(1, int(np.searchsorted(csum, COMPACT_SEGMENT_TOKENS, side="right")))
                    chunk = keep_rows[start:stop]
                    tok, mask = self.gather(chunk)
                    flat = np.ascontiguousarray(tok.cpu().numpy()[mask.cpu().numpy()])
                    offsets = np.concatenate([[0], np.cumsum(lens[start:stop])]).astype(np.int64)
                    ext = self._extras[self._locate(chunk)] if self.extras_dim else None
                    written.append(self._write_segment(flat, offsets, chunk, None, ext))
                    start = stop
                for name in old:
                    (self.root / name).unlink(missing_ok=True)
                    self._segments.pop(name, None)
                for tmp in self.root.glob(".seg-*.tmp"):
                    tmp.unlink(missing_ok=True)
                if live is not None:
                    dropped = np.setdiff1d(self._rows, keep_rows)
                    if len(dropped):
                        self._dead.update(dropped.tolist())
                self._rebuild()
                return {"rows_before": before_rows, "rows_after": len(self._rows), "segments": len(written),
                        "bytes_before": before_bytes, "bytes_after": self.disk_bytes()}

    # ------------------------------------------------------------------ stats
    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("seg-*.safetensors"))

    def stats(self) -> dict[str, Any]:
        return {"rows": len(self), "segments": len(self._segments), "bytes": self.disk_bytes(),
                "tokens": int(self._len.sum()) if len(self._len) else 0}
