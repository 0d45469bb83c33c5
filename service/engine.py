"""The two-stage search and the write paths, independent of HTTP.

Query flow (DESIGN.md): encode the query (global + tokens, micro-batched; a query that reranks is prepared
for the matcher in the same call) →
Qdrant top-`candidates` with the filter → gather the candidates' features,
prepared by the matcher when they were indexed (indexer/preparation.py) →
the similarity interaction scores every candidate of every query in the
micro-batch in one call → fuse → sort → page. Model work runs on one model
thread; store and bank calls on the default thread pool.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from indexer.blobs import BlobStore
from indexer.items import check_text
from indexer.pipeline import Indexer
from indexer.stores import IMAGES, TEXTS, open_store
from indexer.stores.base import normalise_filter
from indexer.tokenbank import Fetched
from indexer.validation import PayloadLimits, id_problem
from training.model.backbone import Backbone
from training.model.bundle import Bundle, load_bundle
from training.model.defaults import TINY_MODEL
from training.model.images import ImageRejected, load_for_model

from .batching import MicroBatcher, OutOfMemory
from .catalog import Catalog
from .config import Settings
from .exceptions import (
    BadInput,
    InvalidRequest,
    NotFound,
    ServiceError,
    TooLarge,
    Unavailable,
    UnsupportedMedia,
)
from .metrics import CANDIDATES, Timer
from .results import Outcome, Scored, SearchOptions, describe, page_of
from .scoring import QueryFeatures, RerankJob, Scorer
from .stored_features import StoredFeatures

T = TypeVar("T")
R = TypeVar("R")
IMAGE_REFUSALS: dict[str, type[ServiceError]] = {"image_too_large": TooLarge,
                                                 "unsupported_media_type": UnsupportedMedia}


def _without_paths(info: dict[str, Any]) -> dict[str, Any]:
    """A pretrained checkpoint given as a file shows as its file name: server paths stay on the server."""
    value = info.get("pretrained")
    return {**info, "pretrained": Path(value).name} if isinstance(value, str) and "/" in value else info


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.model is None and (settings.backbone or settings.pretrained):  # stock: global-only search
            if settings.features == "qdrant":
                raise ValueError("a stock backbone has no matcher features to keep in Qdrant: serve it with "
                                 "features=bank (the default), or serve a trained bundle")
            self.bundle: Bundle = Bundle.stock(Backbone.load(
                settings.backbone or TINY_MODEL, settings.pretrained, device=settings.device,
                precision=settings.precision, cache_dir=settings.cache_dir))
        else:
            self.bundle = load_bundle(settings.resolved_model(), device=settings.device, precision=settings.precision)
        self.backbone = self.bundle.backbone
        self.device = self.backbone.device
        self._matcher = self.bundle.matcher
        self.scorer = Scorer(self.backbone, self._matcher)
        # per direction and kind (fused, global, fine): the (scale, bias) of the calibrated probability
        self.calibration: list[list[list[float]]] | None = (
            self._matcher.calibration.cpu().tolist() if self._matcher is not None and bool(self._matcher.calibrated)
            else None)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = open_store(settings.data_dir, settings.qdrant_url, settings.qdrant_api_key,
                                prefix=settings.qdrant_prefix, features=settings.features)
        try:
            self.indexer = self._open_indexer(settings)
        except BaseException:
            self.store.close()  # and with it the embedded store's lock: a refused start leaves nothing held
            raise
        self.blobs = BlobStore(settings.blob_dir or settings.data_dir / "blobs")
        self.catalog = Catalog(settings, self.store, self.indexer, self.blobs)
        self.stored = StoredFeatures(settings, self.store, self.indexer, self.device,
                                     self._matcher.text_extras if self._matcher is not None else 0)
        self._start(settings)

    def _open_indexer(self, settings: Settings) -> Indexer:
        return Indexer(self.backbone, self.store, settings.data_dir, batch_size=settings.index_batch,
                       workers=settings.decode_workers, max_pixels=settings.max_image_pixels,
                       bank_device=str(self.device) if settings.bank_on_device else None,
                       limits=PayloadLimits.from_settings(settings), matcher=self._matcher,
                       keep_raw_tokens=settings.keep_raw_tokens, blob_dir=settings.blob_dir)

    def _start(self, settings: Settings) -> None:
        """The model thread and the micro-batchers, then one warm-up pass through every model path."""
        # intra-op threads are set per calling thread: the model thread's own. On a small CPU host one
        # model call using every core competes with the event loop and the gather threads (docs/benchmarks.md)
        threads = settings.torch_threads or max(1, (os.cpu_count() or 2) // 2)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model", initializer=torch.set_num_threads,
                                               initargs=(threads,))
        window = settings.batch_window_ms
        # (query, will rerank): a query that will rerank is prepared for the matcher in its encoding call
        self.text_encoder: MicroBatcher[tuple[str, bool], QueryFeatures] = MicroBatcher(
            "encode_text", self.scorer.encode_text_queries, self.model_thread, settings.encode_batch, window)
        self.image_encoder: MicroBatcher[tuple[np.ndarray, bool], QueryFeatures] = MicroBatcher(
            "encode_image", self.scorer.encode_image_queries, self.model_thread, settings.encode_batch, window)
        self.reranker: MicroBatcher[RerankJob, tuple[torch.Tensor, torch.Tensor]] = MicroBatcher(
            "rerank", self.scorer.rerank, self.model_thread, settings.rerank_batch, window)
        self.scorer.warm(self.indexer.preparer)

    @property
    def notice(self) -> str | None:
        """Said with every search answer when reranking is unavailable (a stock backbone)."""
        return self.bundle.notice if self._matcher is None else None

    # ---------------------------------------------------------------- search
    def _check(self, opts: SearchOptions) -> None:
        s = self.settings
        if not 1 <= opts.limit <= s.max_limit:
            raise InvalidRequest(f"limit must be between 1 and {s.max_limit} (max_limit)", "invalid_request")
        if not 1 <= opts.candidates <= s.max_candidates:
            raise InvalidRequest(f"candidates must be between 1 and {s.max_candidates} (max_candidates)",
                           "invalid_request")
        if not 0 <= opts.offset <= s.max_offset:
            raise InvalidRequest(f"offset must be between 0 and {s.max_offset} (max_offset)", "invalid_request")
        try:
            normalise_filter(opts.filter)
        except ValueError as exc:
            raise InvalidRequest(f"filter: {exc}", "invalid_request") from exc

    @staticmethod
    async def _model(batcher: MicroBatcher[T, R], item: T, hint: str = "") -> R:
        """A model call through its micro-batcher; a device out of memory even for this request alone is a 503."""
        try:
            return await batcher.submit(item)
        except OutOfMemory as exc:
            raise Unavailable(f"{exc}{hint}", "out_of_memory") from exc

    def _reranks(self, opts: SearchOptions) -> bool:
        return opts.rerank and self._matcher is not None

    async def _candidates(self, collection: str, query: QueryFeatures, opts: SearchOptions, timer: Timer
                          ) -> tuple[Scored, Fetched | None]:
        """(hit, fused score, patch score) for the recalled candidates, scores None without rerank; and the
        reranked candidates' prepared features, in the same order (for explanations)."""
        want = opts.offset + opts.limit
        if not self._reranks(opts):
            opts = replace(opts, rerank=False)
        n = max(opts.candidates, want) if opts.rerank else want
        vec = query.globals.float().cpu().numpy()
        if not opts.rerank:
            hits = await asyncio.to_thread(self.store.search, collection, vec, n, opts.filter, 0, False)
            timer.lap("recall")
            for stage in ("gather", "rerank"):
                timer.marks.setdefault(stage, 0.0)
            return [(h, None, None) for h in hits], None
        hits, found = await asyncio.to_thread(self.stored.recall_and_gather, collection, vec, n, opts.filter, timer)
        if not hits:
            timer.marks.setdefault("rerank", 0.0)
            return [], None
        CANDIDATES.observe(len(hits))
        scores = torch.tensor([h.score for h in hits], dtype=torch.float32)
        direction = "t2i" if collection == IMAGES else "i2t"
        fused, patch = await self._model(self.reranker, RerankJob(direction, query, found.tokens, found.mask,
                                                                  found.extras, scores), "; lower the candidates")
        timer.lap("rerank")
        return list(zip(hits, fused.tolist(), patch.tolist(), strict=True)), found

    async def search_images(self, text: str, opts: SearchOptions) -> Outcome:
        self._check(opts)
        try:
            text = check_text(text, self.settings.max_text_chars)
        except ValueError as exc:
            raise InvalidRequest(f"text: {exc}", "invalid_text") from exc
        timer = Timer()
        query = await self._model(self.text_encoder, (text, self._reranks(opts)))
        timer.lap("encode")
        scored, found = await self._candidates(IMAGES, query, opts, timer)
        results, page = page_of(scored, opts.offset, opts.limit, opts.min_score, IMAGES, self.calibration)
        await self._explain_page("t2i", query, found, page, results, opts, timer, text)
        return Outcome(results, timer.done())

    async def search_similar_images(self, opts: SearchOptions, image: bytes | None = None,
                                    image_id: str | None = None) -> Outcome:
        """Image → images by the global CLIP cosine: the matcher compares words with patches, so there is nothing
        for it to rerank; scores are the raw cosine (the calibration is for image–text pairs). An indexed query
        image is left out of its own answer."""
        self._check(opts)
        timer = Timer()
        if image is not None:
            pixels = await asyncio.to_thread(self.decode_upload, image)
            vec = (await self._model(self.image_encoder, (pixels, False))).globals
        elif image_id is not None:
            problem = id_problem(image_id, self.settings.max_id_chars)
            if problem:
                raise InvalidRequest(f"image_id: {problem}", "invalid_id")
            found = await asyncio.to_thread(self.store.retrieve, IMAGES, [image_id], True)
            if image_id not in found or found[image_id][1] is None:
                raise NotFound(f"no image with id {image_id!r}", "not_found")
            vec = torch.from_numpy(found[image_id][1])
        else:
            raise InvalidRequest("send a text, an image file or an image_id", "invalid_request")
        timer.lap("encode")
        plain = SearchOptions(opts.limit + (image_id is not None), opts.candidates, False, None, opts.offset,
                              opts.filter)
        scored, _ = await self._candidates(IMAGES, QueryFeatures(vec, vec[None]), plain, timer)
        hits = [h for h, _, _ in scored if h.id != image_id]
        if opts.min_score is not None:
            hits = [h for h in hits if h.score >= opts.min_score]
        results = [describe(h, IMAGES) | {"rank": opts.offset + i + 1, "score": round(h.score, 6),
                                          "global_score": round(h.score, 6), "fine_score": None,
                                          "cosine": round(h.score, 6), "explanation": None}
                   for i, h in enumerate(hits[opts.offset: opts.offset + opts.limit])]
        return Outcome(results, timer.done())

    async def search_texts(self, opts: SearchOptions, image: bytes | None = None,
                           image_id: str | None = None) -> Outcome:
        self._check(opts)
        timer = Timer()
        if image is not None:
            pixels = await asyncio.to_thread(self.decode_upload, image)
            query = await self._model(self.image_encoder, (pixels, self._reranks(opts)))
        elif image_id is not None:
            query = await asyncio.to_thread(self.stored.indexed_image_query, image_id)
        else:
            raise InvalidRequest("send an image file or an image_id", "invalid_request")
        timer.lap("encode")
        scored, found = await self._candidates(TEXTS, query, opts, timer)
        results, page = page_of(scored, opts.offset, opts.limit, opts.min_score, TEXTS, self.calibration)
        await self._explain_page("i2t", query, found, page, results, opts, timer)
        return Outcome(results, timer.done())

    async def _explain_page(self, direction: str, query: QueryFeatures, found: Fetched | None, page: list[int],
                            results: list[dict[str, Any]], opts: SearchOptions, timer: Timer,
                            text: str | None = None) -> None:
        """With `explain`, each reranked result of the page gets its word → patch explanation
        (training/model/explain.py), from one matcher call over the page alone; results stay as they are otherwise."""
        if not opts.explain:
            return
        # a top_k matcher keeps no places of its kept patches: nothing to draw
        if found is not None and page and not self.scorer.matcher.config.top_k:
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self.model_thread, self.scorer.explain, direction, query, found, page,
                                             results, text)
            for r, e in zip(results, out, strict=True):
                r["explanation"] = e
        for r in results:
            r.setdefault("explanation", None)
        timer.lap("explain")

    def decode_upload(self, data: bytes) -> np.ndarray:
        if len(data) > self.settings.max_image_bytes:
            raise TooLarge(f"image is {len(data)} bytes, above the limit of {self.settings.max_image_bytes} "
                           "(max_image_bytes)", "image_too_large")
        try:
            return load_for_model(data, self.backbone.image_size, self.settings.max_image_pixels)
        except ImageRejected as exc:
            raise IMAGE_REFUSALS.get(exc.code, BadInput)(str(exc), exc.code) from exc

    # ------------------------------------------------------------- operations
    def stats(self) -> dict[str, Any]:
        counts = self.catalog.refresh_gauges()
        return {
            "counts": counts,
            "backbone": _without_paths(self.backbone.describe()),
            # the bundle's folder name only: the server's absolute paths are nobody else's business
            "model": {"id": self.bundle.id, "name": Path(self.bundle.path).name if self.bundle.path else None,
                      "synthetic": self.bundle.synthetic, "rerank": self._matcher is not None,
                      "notice": self.bundle.notice,
                      "matcher": self._matcher.config.to_dict() if self._matcher is not None else None},
            "device": str(self.device),
            "store": {"backend": self.store.backend},
            "token_bank": {c: b.stats() for c, b in self.indexer.banks.items()},
            "prepared_bank": {c: b.stats() for c, b in self.indexer.prepared.items()},
        }

    def ready(self) -> bool:
        try:
            self.store.count(IMAGES)
            return True
        except Exception:
            return False

    def close(self) -> None:
        self.model_thread.shutdown(wait=True)
        self.indexer.close()
