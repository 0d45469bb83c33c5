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

from training.model.backbone import Backbone
from training.model.matcher import Matcher

from .segments import fsync_dir
from .stores import IMAGES, TEXTS, Hit, VectorStore
from .stores.base import FEATURES_EXTRAS, FEATURES_FP
from .tokenbank import Fetched, TokenBank, TokenBankError

PREPARED_SUFFIX = ".prepared"
KINDS = ("images", "texts")


class PreparationMismatch(TokenBankError):
    """The stored prepared features do not belong to the matcher offered (or some items have none)."""


def reprepare_hint(data_dir: Path) -> str:
    return (f"run `finesearch index reprepare --model <the bundle you serve> --data-dir {data_dir}` (with the "
            "server stopped) to prepare them for this matcher from the kept raw tokens")


@dataclass
class PreparedFeatures:
    tokens: torch.Tensor  # [B, L, d]
    lengths: np.ndarray  # [B]
    extras: torch.Tensor | None  # [B, e] (captions: the LDA weights)

    def take(self, rows: slice) -> PreparedFeatures:
        """The same rows of every field (a refused batch is retried item by item)."""
        return PreparedFeatures(self.tokens[rows], self.lengths[rows],
                                None if self.extras is None else self.extras[rows])


class Preparer:
    """The matcher's per-item half, as the indexer and `reprepare` call it."""

    def __init__(self, matcher: Matcher, backbone_fingerprint: str) -> None:
        self.matcher = matcher
        self.fingerprint = f"{backbone_fingerprint}/{matcher.preparation_fingerprint()}"

    def extras_dim(self, kind: str) -> int:
        return self.matcher.text_extras if kind == "texts" else 0

    @torch.inference_mode()
    def prepare(self, kind: str, tokens: torch.Tensor, lengths: np.ndarray, globals_: torch.Tensor | None
                ) -> PreparedFeatures:
        m = self.matcher
        dev = next(m.parameters()).device
        tokens = tokens.to(dev)
        if kind == "images":
            g = globals_.to(dev) if globals_ is not None else tokens.new_zeros(tokens.shape[0], tokens.shape[2])
            img = m.prepare_images(tokens, g)
            return PreparedFeatures(img.patches, np.full(len(lengths), img.patches.shape[1]), None)
        lens = torch.as_tensor(np.asarray(lengths), device=dev)
        mask = torch.arange(tokens.shape[1], device=dev)[None, :] < lens[:, None]
        txt = m.prepare_texts(tokens, mask, tokens.new_zeros(tokens.shape[0], tokens.shape[2]))
        return PreparedFeatures(txt.words, txt.mask.sum(1).cpu().numpy(), txt.lda)


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
    old = root.with_name(root.name + ".old")
    if not root.exists() and old.exists():  # a reprepare died between its two renames: the old bank is whole
        old.rename(root)
    found = stored_fingerprint(root)
    if found is not None and found != preparer.fingerprint:
        raise PreparationMismatch(
            f"the token features in {root} were prepared by another matcher ({found.split('/')[-1]}; this model's "
            f"is {preparer.fingerprint.split('/')[-1]}): {reprepare_hint(data_dir)}")
    bank = TokenBank(root, raw.dim, preparer.fingerprint, device=device, extras_dim=preparer.extras_dim(kind))
    raw.refresh()  # after the prepared bank: a delete tombstones raw rows first, so no row looks half-gone
    missing = np.setdiff1d(raw.live_rows(), bank.live_rows(), assume_unique=True)
    if len(missing):
        raise PreparationMismatch(
            f"{len(missing)} of the {len(raw)} items in {raw.root} have no features prepared for this matcher "
            f"(indexed before index-time preparation, or by an indexer without the model): {reprepare_hint(data_dir)}")
    return bank


def check_store_features(store: VectorStore, collection: str, preparer: Preparer, data_dir: Path) -> None:
    """Features kept on Qdrant points: every point must carry this matcher's (the same refusal as a bank's)."""
    other = store.count_without_features(collection, preparer.fingerprint)
    if other:
        raise PreparationMismatch(
            f"{other} of the {store.count(collection)} points of collection {collection!r} hold no features "
            f"prepared by this matcher ({preparer.fingerprint.split('/')[-1]}): {reprepare_hint(data_dir)}")


def fetched_from_hits(hits: list[Hit], extras_dim: int) -> Fetched:
    """Candidates that came with their features (a store that holds them) → the batch a bank fetch returns."""
    lmax = max((h.features.shape[0] for h in hits if h.features is not None), default=0)
    d = next(h.features.shape[1] for h in hits if h.features is not None) if lmax else 0
    tokens = np.zeros((len(hits), lmax, d), dtype=np.float16)
    lengths = np.array([h.features.shape[0] if h.features is not None else 0 for h in hits])
    for k, h in enumerate(hits):  # one copy per candidate of an array Qdrant already decoded per point
        if h.features is not None:
            tokens[k, :lengths[k]] = h.features
    mask = np.arange(lmax)[None, :] < lengths[:, None]
    extras = None
    if extras_dim:
        extras = torch.tensor([h.payload.get(FEATURES_EXTRAS) or [0.0] * extras_dim for h in hits],
                              dtype=torch.float32)
    return Fetched(torch.from_numpy(tokens), torch.from_numpy(mask), extras, np.arange(len(hits)))


def _chunks(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for lo in range(0, len(rows), size):
        yield rows[lo:lo + size]


def reprepare(raw: TokenBank, preparer: Preparer, kind: str, globals_of: dict[int, np.ndarray] | None = None,
              batch: int = 256) -> dict[str, float]:
    """Prepare every live row of the raw bank into a fresh bank, then swap it in place of the old one.

    The new bank is built beside the old (`*.prepared.new`) and renamed over it at the end, so an interrupted
    run leaves the old bank as it was. `globals_of` (row → global vector) feeds the patch selector, when the
    matcher has one. Rows no point references (orphans of a crash, until `compact` drops them) are prepared
    too, with a zero global where the selector needs one: nothing serves them, and the prepared bank then
    covers the raw one as a server's start-up check requires.
    """
    root = prepared_root(raw.root)
    tmp = root.with_name(root.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    live = raw.live_rows()
    start = time.perf_counter()
    new = TokenBank(tmp, raw.dim, preparer.fingerprint, extras_dim=preparer.extras_dim(kind))
    for rows in _chunks(live, batch):
        tokens, mask = raw.gather(rows)
        g = None
        if globals_of is not None:
            zero = np.zeros(raw.dim, dtype=np.float32)
            g = torch.from_numpy(np.stack([globals_of.get(int(r), zero) for r in rows]).astype(np.float32))
        p = preparer.prepare(kind, tokens.float(), mask.sum(1).numpy(), g)
        new.append(p.tokens, p.lengths, rows=rows, extras=p.extras)
    elapsed, size = time.perf_counter() - start, new.disk_bytes()
    old = root.with_name(root.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if root.exists():
        root.rename(old)  # from here until the next rename, `open_prepared` restores `.old` if this process dies
    tmp.rename(root)
    fsync_dir(root.parent)
    shutil.rmtree(old, ignore_errors=True)
    return {"items": int(len(live)), "seconds": round(elapsed, 3),
            "items_per_s": round(len(live) / elapsed, 1) if elapsed > 0 else 0.0, "bytes": size}


def reprepare_index(store: VectorStore, data_dir: Path, backbone: Backbone, matcher: Matcher, batch: int = 256
                    ) -> dict[str, dict[str, float]]:
    """Every collection's prepared features for `matcher`, from the kept raw tokens: into fresh prepared banks,
    or onto the Qdrant points when the store holds the features. No image is re-encoded."""
    preparer = Preparer(matcher, backbone.fingerprint)
    needs_globals = bool(matcher.config.top_k)  # the patch selector reads each image's global vector
    store.bind_backbone(backbone.fingerprint, backbone.embed_dim, backbone.describe())
    tokens = data_dir / "tokens"
    names = sorted(p.name for p in tokens.iterdir() if p.is_dir() and "." not in p.name) if tokens.is_dir() else []
    out: dict[str, dict[str, float]] = {}
    for name in names:
        payloads = [p for p in store.scroll(name) if isinstance(p.get("row"), int)]
        if not payloads and name not in (IMAGES, TEXTS):
            continue  # an empty custom collection: its kind is unknown until something is indexed into it
        kinds = {p.get("kind") for p in payloads} - {None}
        kind = {IMAGES: "images", TEXTS: "texts"}.get(name) or ("texts" if kinds == {"text"} else "images")
        raw = TokenBank(tokens / name, backbone.embed_dim, backbone.fingerprint)
        live = np.array(sorted(int(p["row"]) for p in payloads), dtype=np.int64)
        missing = np.setdiff1d(live, raw.live_rows())
        if len(missing):
            raise PreparationMismatch(
                f"{len(missing)} of the {len(live)} items of collection {name!r} have no raw tokens (indexed with "
                "--no-keep-raw-tokens): re-index them with this model (`finesearch index ... --force`)")
        globals_of = None
        if needs_globals and kind == "images":
            ids = [str(p["item_id"]) for p in payloads]
            globals_of = {}
            for lo in range(0, len(ids), 1024):
                for pay, vec in store.retrieve(name, ids[lo:lo + 1024], with_vectors=True).values():
                    globals_of[int(pay["row"])] = vec
        if store.holds_features:
            out[name] = _reprepare_in_store(store, name, raw, preparer, kind, payloads, globals_of, batch)
        else:
            out[name + PREPARED_SUFFIX] = reprepare(raw, preparer, kind, globals_of, batch)
    return out


def _reprepare_in_store(store: VectorStore, name: str, raw: TokenBank, preparer: Preparer, kind: str,
                        payloads: list[dict], globals_of: dict[int, np.ndarray] | None, batch: int
                        ) -> dict[str, float]:
    """Features on the Qdrant points (features=qdrant): each point's replaced in place, batch by batch."""
    start = time.perf_counter()
    points = [(str(p["item_id"]), int(p["row"])) for p in payloads]
    for lo in range(0, len(points), batch):
        chunk = points[lo:lo + batch]
        rows = np.array([r for _, r in chunk], dtype=np.int64)
        tokens, mask = raw.gather(rows)
        g = None
        if globals_of is not None:  # a point deleted since the scroll has no global: zero (its write is moot)
            zero = np.zeros(raw.dim, dtype=np.float32)
            g = torch.from_numpy(np.stack([globals_of.get(int(r), zero) for r in rows]).astype(np.float32))
        p = preparer.prepare(kind, tokens.float(), mask.sum(1).numpy(), g)
        feats = p.tokens.detach().to("cpu", torch.float16).numpy()
        extra = [{FEATURES_FP: preparer.fingerprint} | ({FEATURES_EXTRAS: p.extras[k].tolist()}
                                                         if p.extras is not None else {}) for k in range(len(chunk))]
        store.set_features(name, [i for i, _ in chunk], [feats[k, :n] for k, n in enumerate(p.lengths.tolist())],
                           extra)
    elapsed = time.perf_counter() - start
    return {"items": len(points), "seconds": round(elapsed, 3),
            "items_per_s": round(len(points) / elapsed, 1) if elapsed > 0 else 0.0}
