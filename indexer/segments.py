"""One segment file of a token bank (indexer/tokenbank.py), read and written.

A segment is a safetensors file: tokens [T, d] fp16, offsets [n+1] i64, rows [n] i64 (+ extras [n, e]
f32), the backbone fingerprint (and the items' ids) in its metadata. It is read by mapping the tokens
without reading them (the format is a JSON header then raw data), and written to a temporary name,
fsynced and renamed, so a crash leaves either a whole segment or none.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


class TokenBankError(RuntimeError):
    pass


@dataclass
class Segment:
    path: Path
    tokens: np.ndarray  # memmap [T, d] float16
    offsets: np.ndarray  # [n+1] int64
    rows: np.ndarray  # [n] int64
    extras: np.ndarray | None = None  # [n, e] float32


def read_segment(path: Path) -> Segment:
    """Map the tokens tensor of a safetensors file without reading it (the format is a JSON header + raw data)."""
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
        base = 8 + header_len

        def small(name: str, dtype: type = np.int64) -> np.ndarray:
            meta = header[name]
            begin, end = meta["data_offsets"]
            fh.seek(base + begin)
            return np.frombuffer(fh.read(end - begin), dtype=dtype).copy().reshape(meta["shape"])

        offsets, rows = small("offsets"), small("rows")
        extras = small("extras", np.float32) if "extras" in header else None
    meta = header["tokens"]
    if meta["dtype"] != "F16":
        raise TokenBankError(f"{path}: tokens must be F16, found {meta['dtype']}")
    shape = tuple(meta["shape"])
    begin = meta["data_offsets"][0]
    if shape[0] == 0:
        tokens = np.zeros(shape, dtype=np.float16)
    else:
        tokens = np.memmap(path, dtype=np.float16, mode="r", offset=base + begin, shape=shape)
    return Segment(path, tokens, offsets, rows, extras)


def write_segment(path: Path, tokens: np.ndarray, offsets: np.ndarray, rows: np.ndarray, fingerprint: str,
                  ids: Sequence[str] | None = None, extras: np.ndarray | None = None) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    meta: dict[str, str] = {"fingerprint": fingerprint}
    if ids is not None:
        meta["ids"] = json.dumps(list(ids))
    tensors = {"tokens": tokens, "offsets": offsets, "rows": rows}
    if extras is not None:
        tensors["extras"] = np.ascontiguousarray(extras, dtype=np.float32)
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
