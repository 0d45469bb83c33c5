"""The batch pipeline: read → hash → skip known → decode (worker threads) → encode → write.

Decoding of batch i+1 runs on a thread pool while batch i is being encoded
(Pillow and torch both release the GIL), so on a multi-core host the encoder
is the bottleneck, not JPEG decoding. Writes go features-first: the token bank
append is durable before the Qdrant upsert, so a crash leaves at most orphan
token rows (dropped by `compact`), never a searchable point without features.
With a matcher, each item's prepared features (indexer/preparation.py) are written
before its raw tokens, so every raw row has prepared features even after a crash.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.model.backbone import Backbone
from training.model.images import DEFAULT_MAX_PIXELS
from training.model.matcher import Matcher
from training.progress import progress_bar

from .blobs import BlobStore
from .decoding import DecodedBatch, check_item, decode_batch, prefetch, read_batch
from .items import Failure, ImageItem, Summary, TextItem, check_text, text_id
from .preparation import (
    PreparationMismatch,
    PreparedFeatures,
    Preparer,
    check_store_features,
    open_prepared,
    prepared_root,
)
from .stores import IMAGES, TEXTS, VectorStore
from .stores.base import FEATURES_EXTRAS, FEATURES_FP
from .tokenbank import TokenBank
from .validation import PayloadLimits, PayloadRejected, check_id


class Indexer:
    """Owns the encoders' use for ingestion and the write order into token bank + Qdrant."""

    def __init__(
        self,
        backbone: Backbone,
        store: VectorStore,
        data_dir: str | Path,
        batch_size: int = 64,
        workers: int = 4,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        indexed_fields: Mapping[str, str] | None = None,
        bank_device: str | None = None,
        limits: PayloadLimits | None = None,
        matcher: Matcher | None = None,
        keep_raw_tokens: bool = True,
        blob_dir: str | Path | None = None,
    ) -> None:
        """`matcher`: prepare each item's matcher features at indexing time (what the service reranks on).
        `keep_raw_tokens=False` stores only those (about half the bytes), at the price of re-encoding every
        item for a new matcher instead of `finesearch index reprepare`."""
        self.backbone = backbone
        self.store = store
        self.data_dir = Path(data_dir)
        self.blob_dir = Path(blob_dir) if blob_dir is not None else self.data_dir / "blobs"
        self.batch_size = batch_size
        self.workers = max(1, workers)
        self.max_pixels = max_pixels
        self.indexed_fields = dict(indexed_fields or {})
        self.bank_device = bank_device
        self.limits = limits or PayloadLimits()
        if matcher is None and not keep_raw_tokens:
            raise ValueError("without a matcher the raw tokens are the only token features: keep them")
        self.preparer = Preparer(matcher, backbone.fingerprint) if matcher is not None else None
        self.keep_raw_tokens = keep_raw_tokens
        # prepared features on each Qdrant point (server mode, features="qdrant") instead of a prepared bank
        self.features_in_store = store.holds_features
        store.bind_backbone(backbone.fingerprint, backbone.embed_dim, backbone.describe())
        self.banks: dict[str, TokenBank] = {}  # raw tokens (row ids are allocated here)
        self.prepared: dict[str, TokenBank] = {}  # the matcher's prepared features, same row ids
        self._write_lock = threading.RLock()
        for coll in (IMAGES, TEXTS):
            self.collection(coll)

    def collection(self, name: str, kind: str | None = None) -> TokenBank:
        """Create the collection and its token banks on first use; return the raw bank.

        `kind` ("images" or "texts") says what a collection other than the two standard ones holds."""
        with self._write_lock:
            if name not in self.banks:
                if not name.replace("_", "").replace("-", "").isalnum():
                    raise ValueError(f"collection names are letters, digits, '-' and '_' only, not {name!r}")
                kind = kind or {IMAGES: "images", TEXTS: "texts"}.get(name)
                self.store.ensure_collection(name, self.backbone.embed_dim, self.indexed_fields)
                # the bank the service gathers from lives on the device; raw tokens then serve only reprepare
                raw = TokenBank(self.data_dir / "tokens" / name, self.backbone.embed_dim, self.backbone.fingerprint,
                                device=None if self.preparer else self.bank_device)
                if self.preparer is None and prepared_root(raw.root).is_dir():
                    raise PreparationMismatch(
                        f"collection {name!r} serves matcher features prepared at indexing "
                        f"({prepared_root(raw.root)}): index with the model it serves (--model BUNDLE), so the new "
                        "items get them too")
                if self.preparer is not None:
                    if kind is None:
                        raise ValueError(f"say whether collection {name!r} holds images or texts")
                    if self.features_in_store:
                        check_store_features(self.store, name, self.preparer, self.data_dir)
                    else:
                        self.prepared[name] = open_prepared(raw, self.preparer, kind, self.data_dir,
                                                            self.bank_device)
                self.banks[name] = raw
            return self.banks[name]

    def serving_bank(self, name: str) -> TokenBank:
        """What a search gathers candidates' features from: the prepared bank, or the raw one without a matcher."""
        prepared = self.prepared.get(name)
        return prepared if prepared is not None else self.banks[name]

    def _prepare_features(self, kind: str, tokens: Any, lengths: np.ndarray, globals_: Any) -> PreparedFeatures | None:
        return self.preparer.prepare(kind, tokens, lengths, globals_) if self.preparer is not None else None

    # --------------------------------------------------------------- images
    def _prepare(self, pool: ThreadPoolExecutor, batch: Sequence[tuple[int, ImageItem]], skip_existing: bool,
                 seen: dict[str, int], hashes: dict[str, str], collection: str) -> DecodedBatch:
        """Read, check and decode one batch (indexer/decoding.py)."""
        todo, skipped, failures = read_batch(pool, batch, self.store if skip_existing else None, collection, seen,
                                             hashes, self.limits)
        return decode_batch(pool, todo, self.backbone.image_size, self.max_pixels, skipped, failures)

    def index_images(self, items: Iterable[ImageItem], *, skip_existing: bool = True, progress: bool = False,
                     total: int | None = None, on_batch: Callable[[Summary], None] | None = None,
                     collection: str = IMAGES) -> Summary:
        """Index images; broken ones are reported in the summary, never raised."""
        self.collection(collection, "images")
        summary = Summary()
        start = time.perf_counter()
        items = list(items)
        summary.ids = [None] * len(items)
        batches = [list(enumerate(items))[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        bar = progress_bar(total=total or len(items), unit="img", disable=not progress, dynamic_ncols=True)
        seen: dict[str, int] = {}
        hashes: dict[str, str] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            for prep in prefetch((self._prepare(pool, b, skip_existing, seen, hashes, collection) for b in batches),
                                  depth=2):
                summary.skipped += len(prep.skipped)
                for pos, iid in prep.skipped:
                    summary.ids[pos] = iid
                    if iid in seen:
                        summary.duplicates[pos] = seen[iid]
                for pos, fail in prep.failures:
                    summary.fail(pos, fail)
                if prep.pixels is not None:
                    feats = self.backbone.encode_images(prep.pixels)
                    lengths = np.full(len(prep.ids), feats.tokens.shape[1])
                    refused = self._write(collection, prep.ids, feats.globals, feats.tokens, lengths, prep.payloads,
                                          self._prepare_features("images", feats.tokens, lengths, feats.globals))
                    for k, (pos, iid) in enumerate(zip(prep.positions, prep.ids, strict=True)):
                        if k in refused:
                            summary.fail(pos, Failure(iid, refused[k], "store_refused"))
                        else:
                            summary.indexed += 1
                            summary.ids[pos] = iid
                done = len(prep.ids) + len(prep.skipped) + len(prep.failures)
                bar.update(done)
                summary.elapsed = time.perf_counter() - start
                bar.set_postfix(indexed=summary.indexed, skipped=summary.skipped, failed=summary.failed, refresh=False)
                if on_batch:
                    on_batch(summary)
        bar.close()
        summary.elapsed = time.perf_counter() - start
        return summary

    # ---------------------------------------------------------------- texts
    def index_texts(self, items: Iterable[TextItem], *, skip_existing: bool = True, progress: bool = False,
                    batch_size: int = 256, collection: str = TEXTS, max_chars: int | None = None) -> Summary:
        self.collection(collection, "texts")
        max_chars = self.limits.max_text_chars if max_chars is None else max_chars
        summary = Summary()
        start = time.perf_counter()
        items = list(items)
        summary.ids = [None] * len(items)
        bar = progress_bar(total=len(items), unit="text", disable=not progress, dynamic_ncols=True)
        seen: dict[str, int] = {}
        for lo in range(0, len(items), batch_size):
            chunk = list(enumerate(items[lo:lo + batch_size], lo))
            valid: list[tuple[int, str, str, TextItem]] = []
            for pos, it in chunk:
                try:
                    check_item(it, self.limits)
                    if it.image_id is not None:
                        check_id(it.image_id, self.limits.max_id_chars)
                    text = check_text(it.text, max_chars)
                except PayloadRejected as exc:
                    summary.fail(pos, Failure(str(it.id or f"#{pos}"), str(exc), exc.code))
                    continue
                except ValueError as exc:
                    summary.fail(pos, Failure(str(it.id or f"#{pos}"), str(exc), "invalid_text"))
                    continue
                valid.append((pos, it.id or text_id(text), text, it))
            known = self.store.existing(collection, [v[1] for v in valid]) if skip_existing else set()
            todo = []
            for v in valid:
                if v[1] in known or v[1] in seen:
                    summary.skipped += 1
                    summary.ids[v[0]] = v[1]
                    if v[1] in seen:
                        summary.duplicates[v[0]] = seen[v[1]]
                else:
                    seen[v[1]] = v[0]
                    todo.append(v)
            if todo:
                feats = self.backbone.encode_texts([t for _, _, t, _ in todo])
                payloads = [{"kind": "text", "text": t, "image_id": it.image_id, "metadata": dict(it.metadata),
                             **it.extra} for _, _, t, it in todo]
                lengths = feats.lengths.cpu().numpy()
                refused = self._write(collection, [i for _, i, _, _ in todo], feats.globals, feats.tokens, lengths,
                                      payloads, self._prepare_features("texts", feats.tokens, lengths, None))
                for k, (pos, iid, _, _) in enumerate(todo):
                    if k in refused:
                        summary.fail(pos, Failure(iid, refused[k], "store_refused"))
                    else:
                        summary.indexed += 1
                        summary.ids[pos] = iid
            bar.update(len(chunk))
        bar.close()
        summary.elapsed = time.perf_counter() - start
        return summary

    # ---------------------------------------------------------------- writes
    def _write(self, collection: str, ids: list[str], globals_: Any, tokens: Any, lengths: np.ndarray,
               payloads: list[dict[str, Any]], prepared: PreparedFeatures | None = None) -> dict[int, str]:
        """Features first (durable), then Qdrant, then tombstone the rows of replaced items.

        Returns {batch index: why the store refused it}. A refused batch is rolled back (its fresh rows
        tombstoned, so no orphan row is left for compaction to find) and retried item by item, so one
        item the store will not take never costs the others their write.
        """
        with self._write_lock:
            try:
                self._write_batch(collection, ids, globals_, tokens, lengths, payloads, prepared)
                return {}
            except Exception as exc:
                if len(ids) == 1:
                    return {0: f"the store refused the item: {exc}"}
            refused: dict[int, str] = {}
            for k in range(len(ids)):
                try:
                    one = None if prepared is None else prepared.take(slice(k, k + 1))
                    self._write_batch(collection, ids[k:k + 1], globals_[k:k + 1], tokens[k:k + 1],
                                      lengths[k:k + 1], payloads[k:k + 1], one)
                except Exception as exc:
                    refused[k] = f"the store refused the item: {exc}"
            return refused

    def _write_batch(self, collection: str, ids: list[str], globals_: Any, tokens: Any, lengths: np.ndarray,
                     payloads: list[dict[str, Any]], prepared: PreparedFeatures | None) -> None:
        bank = self.banks[collection]
        previous = self.store.retrieve(collection, ids)
        rows = bank.reserve(len(ids))
        in_store = self.features_in_store and prepared is not None
        if prepared is not None and not in_store:  # prepared first: every raw row has prepared features
            self.prepared[collection].append(prepared.tokens, prepared.lengths, ids=ids, rows=rows,
                                             extras=prepared.extras)
        if self.keep_raw_tokens or prepared is None:
            bank.append(tokens, lengths, ids=ids, rows=rows)
        for p, r in zip(payloads, rows.tolist(), strict=True):
            p["row"] = int(r)
        try:
            if in_store:
                assert prepared is not None and self.preparer is not None
                feats = prepared.tokens.detach().to("cpu", torch.float16).numpy()
                for k, p in enumerate(payloads):
                    p[FEATURES_FP] = self.preparer.fingerprint
                    if prepared.extras is not None:
                        p[FEATURES_EXTRAS] = prepared.extras[k].tolist()
                self.store.upsert_with_features(collection, ids, globals_.cpu().numpy(), payloads,
                                                [feats[k, :n] for k, n in enumerate(prepared.lengths.tolist())])
            else:
                self.store.upsert(collection, ids, globals_.cpu().numpy(), payloads)
        except Exception:
            self._roll_back(collection, ids, rows.tolist())
            raise
        stale = [int(p["row"]) for p, _ in previous.values() if "row" in p]
        if stale:
            self._tombstone(collection, stale)

    def _tombstone(self, collection: str, rows: list[int]) -> None:
        """Tombstone rows in every bank of the collection that holds them."""
        for bank in (self.banks[collection], self.prepared.get(collection)):
            if bank is not None:
                bank.delete(r for r in rows if r in bank)

    def _roll_back(self, collection: str, ids: list[str], rows: list[int]) -> None:
        """Tombstone the rows a refused upsert left unreferenced; rows a point does reference stay."""
        try:
            now = self.store.retrieve(collection, ids)
        except Exception:  # the store cannot even answer: leave the rows to `compact`, which drops orphans
            return
        referenced = {int(p["row"]) for p, _ in now.values() if "row" in p}
        self._tombstone(collection, [r for r in rows if r not in referenced])

    def delete(self, collection: str, ids: Sequence[str]) -> int:
        """Remove items: Qdrant first (they stop matching), then tombstone their token rows."""
        with self._write_lock:
            found = self.store.retrieve(collection, ids)
            if not found:
                return 0
            self.store.delete(collection, list(found))
            self._tombstone(collection, [int(p["row"]) for p, _ in found.values() if "row" in p])
            return len(found)

    def compact(self) -> dict[str, dict[str, int]]:
        """Drop tombstoned and orphaned token rows (orphans: rows no Qdrant point references)."""
        out: dict[str, dict[str, int]] = {}
        with self._write_lock:
            blobs: set[str] = set()
            for coll, bank in self.banks.items():
                live = []
                for p in self.store.scroll(coll):
                    if "row" in p:
                        live.append(int(p["row"]))
                    if p.get("blob"):
                        blobs.add(p["blob"])
                out[coll] = bank.compact(live)
                if coll in self.prepared:
                    out[coll + ".prepared"] = self.prepared[coll].compact(live)
            if self.blob_dir.is_dir():
                out["blobs"] = {"removed": BlobStore(self.blob_dir).sweep(blobs)}
        return out

    def close(self) -> None:
        self.store.close()
