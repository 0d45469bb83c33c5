"""Index-time preparation: each item's matcher features, computed once when it is indexed.

Everything the matcher does to one item alone (patch positions, selection and adapters for an image; word
context, adapters and LDA weights for a caption) depends only on that item and the matcher's weights, not on
the query. Doing it at indexing time leaves the rerank stage the similarity interaction alone. The prepared
features live in a second token bank per collection (`tokens/<collection>.prepared/`), under the raw bank's
row ids, fingerprinted by backbone and matcher; the raw tokens stay (unless `--no-keep-raw-tokens`) so a new
matcher on the same backbone is a `finesearch index reprepare` away, without re-encoding any image.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.matcher import Matcher
from training.tokenbank import TokenBank, TokenBankError

PREPARED_SUFFIX = ".prepared"
KINDS = ("images", "texts")


class PreparationMismatch(TokenBankError):
    """The stored prepared features do not belong to the matcher offered (or some items have none)."""


def reprepare_hint(data_dir: Path) -> str:
    return (f"run `finesearch index reprepare --model <the bundle you serve> --data-dir {data_dir}` (with the "
            "server stopped) to prepare them for this matcher from the kept raw tokens")


@dataclass
class Prepared:
    tokens: torch.Tensor  # [B, L, d]
    lengths: np.ndarray  # [B]
    extras: torch.Tensor | None  # [B, e] (captions: the LDA weights)


class Preparer:
    """The matcher's per-item half, as the indexer and `reprepare` call it."""

    def __init__(self, matcher: Matcher, backbone_fingerprint: str) -> None:
        self.matcher = matcher
        self.fingerprint = f"{backbone_fingerprint}/{matcher.preparation_fingerprint()}"

    def extras_dim(self, kind: str) -> int:
        return self.matcher.text_extras if kind == "texts" else 0

    @torch.inference_mode()
    def prepare(self, kind: str, tokens: torch.Tensor, lengths: np.ndarray, globals_: torch.Tensor | None
                ) -> Prepared:
        m = self.matcher
        dev = next(m.parameters()).device
        tokens = tokens.to(dev)
        if kind == "images":
            g = globals_.to(dev) if globals_ is not None else tokens.new_zeros(tokens.shape[0], tokens.shape[2])
            img = m.prepare_images(tokens, g)
            return Prepared(img.patches, np.full(len(lengths), img.patches.shape[1]), None)
        lens = torch.as_tensor(np.asarray(lengths), device=dev)
        mask = torch.arange(tokens.shape[1], device=dev)[None, :] < lens[:, None]
        txt = m.prepare_texts(tokens, mask, tokens.new_zeros(tokens.shape[0], tokens.shape[2]))
        return Prepared(txt.words, txt.mask.sum(1).cpu().numpy(), txt.lda)


def prepared_root(raw_root: Path) -> Path:
    return raw_root.with_name(raw_root.name + PREPARED_SUFFIX)


def stored_fingerprint(root: Path) -> str | None:
    manifest = root / "bank.json"
    return json.loads(manifest.read_text()).get("fingerprint") if manifest.is_file() else None


def open_prepared(raw: TokenBank, preparer: Preparer, kind: str, data_dir: Path, device: str | None = None
                  ) -> TokenBank:
    """The collection's prepared bank for this matcher; refused (with the command that fixes it) when it was
    prepared by another matcher or when any raw item has no prepared features."""
    root = prepared_root(raw.root)
    found = stored_fingerprint(root)
    if found is not None and found != preparer.fingerprint:
        raise PreparationMismatch(
            f"the token features in {root} were prepared by another matcher ({found.split('/')[-1]}; this model's "
            f"is {preparer.fingerprint.split('/')[-1]}): {reprepare_hint(data_dir)}")
    bank = TokenBank(root, raw.dim, preparer.fingerprint, device=device, extras_dim=preparer.extras_dim(kind))
    missing = np.setdiff1d(raw.live_rows(), bank.live_rows(), assume_unique=True)
    if len(missing):
        raise PreparationMismatch(
            f"{len(missing)} of the {len(raw)} items in {raw.root} have no features prepared for this matcher "
            f"(indexed before index-time preparation, or by an indexer without the model): {reprepare_hint(data_dir)}")
    return bank


def _chunks(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for lo in range(0, len(rows), size):
        yield rows[lo:lo + size]


def reprepare(raw: TokenBank, preparer: Preparer, kind: str, live: np.ndarray,
              globals_of: dict[int, np.ndarray] | None = None, batch: int = 256) -> dict[str, float]:
    """Prepare every `live` row of the raw bank into a fresh bank, then swap it in place of the old one.

    The new bank is built beside the old (`*.prepared.new`) and renamed over it at the end, so an interrupted
    run leaves the old bank as it was. `globals_of` (row → global vector) feeds the patch selector, when the
    matcher has one.
    """
    root = prepared_root(raw.root)
    tmp = root.with_name(root.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    live = np.intersect1d(np.asarray(live, dtype=np.int64), raw.live_rows())
    start = time.perf_counter()
    new = TokenBank(tmp, raw.dim, preparer.fingerprint, extras_dim=preparer.extras_dim(kind))
    for rows in _chunks(live, batch):
        tokens, mask = raw.gather(rows)
        g = None
        if globals_of is not None:
            g = torch.from_numpy(np.stack([globals_of[int(r)] for r in rows]).astype(np.float32))
        p = preparer.prepare(kind, tokens.float(), mask.sum(1).numpy(), g)
        new.append(p.tokens, p.lengths, rows=rows, extras=p.extras)
    elapsed, size = time.perf_counter() - start, new.disk_bytes()
    old = root.with_name(root.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if root.exists():
        root.rename(old)
    tmp.rename(root)
    shutil.rmtree(old, ignore_errors=True)
    return {"items": int(len(live)), "seconds": round(elapsed, 3),
            "items_per_s": round(len(live) / elapsed, 1) if elapsed > 0 else 0.0, "bytes": size}
