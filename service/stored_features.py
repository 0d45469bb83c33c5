"""The matcher's prepared features of indexed items, as a search reads them: a search's candidates with
their features in one trip to a worker thread (from the token bank, or from Qdrant with `features="qdrant"`),
and an indexed image used as a query, whose patches were prepared when it was indexed."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from indexer.pipeline import Indexer
from indexer.preparation import fetched_from_hits
from indexer.stores import IMAGES, TEXTS, Hit, VectorStore
from indexer.stores.base import FEATURES_FP
from indexer.tokenbank import Fetched
from indexer.validation import id_problem

from .config import Settings
from .exceptions import Conflict, InvalidRequest, NotFound
from .metrics import Timer
from .scoring import QueryFeatures

log = logging.getLogger("finesearch.engine")  # the search's log, under the name it has always had


class StoredFeatures:
    def __init__(self, settings: Settings, store: VectorStore, indexer: Indexer, device: torch.device,
                 text_extras: int) -> None:
        self.settings, self.store, self.indexer, self.device = settings, store, indexer, device
        self.text_extras = text_extras  # a caption's stored values beside its words (the LDA weights)

    def recall_and_gather(self, collection: str, vec: np.ndarray, n: int, flt: Any, timer: Timer
                           ) -> tuple[list[Hit], Fetched]:
        """The candidates and their prepared features, in one trip to a worker thread."""
        if self.indexer.features_in_store:  # both in one store call (features="qdrant")
            hits = self.store.search_with_features(collection, vec, n, flt)
            timer.lap("recall")
            # a point written since startup by a process with another matcher (or none) is left out
            fp = self.indexer.preparer.fingerprint  # type: ignore[union-attr]
            ok = [h for h in hits if h.features is not None and h.payload.get(FEATURES_FP) == fp]
            if len(ok) < len(hits):
                log.warning("%d candidates carry no features of this matcher; dropped (run `finesearch index "
                            "reprepare`)", len(hits) - len(ok))
            found = fetched_from_hits(ok, self.text_extras if collection == TEXTS else 0)
            timer.lap("gather")
            return ok, found
        # candidates come without vectors: their prepared features hold all the rerank needs
        hits = self.store.search(collection, vec, n, flt, 0, False)
        timer.lap("recall")
        hits, found = self.gather(self.indexer.serving_bank(collection), hits)
        timer.lap("gather")
        return hits, found

    @staticmethod
    def gather(bank: Any, hits: list[Hit]) -> tuple[list[Hit], Fetched]:
        """The candidates' features in one consistent step (under the bank's lock); a candidate whose row a
        concurrent replace or delete tombstoned after recall is dropped from this answer, not an internal error."""
        hits = [h for h in hits if isinstance(h.payload.get("row"), int)]
        found = bank.fetch([h.payload["row"] for h in hits])
        if len(found.kept) < len(hits):
            log.info("%d candidates lost their token features to a concurrent write; dropped",
                     len(hits) - len(found.kept))
            hits = [hits[i] for i in found.kept.tolist()]
        return hits, found

    def indexed_image_query(self, image_id: str) -> QueryFeatures:
        problem = id_problem(image_id, self.settings.max_id_chars)
        if problem:
            raise InvalidRequest(f"image_id: {problem}", "invalid_id")
        if self.indexer.features_in_store:
            got = self.store.retrieve_features(IMAGES, [image_id])
            vec = self.store.retrieve(IMAGES, [image_id], with_vectors=True).get(image_id)
            fp = self.indexer.preparer.fingerprint  # type: ignore[union-attr]
            if image_id in got and got[image_id][0].get(FEATURES_FP) != fp:
                raise Conflict(f"image {image_id!r} was indexed with another matcher's features: run "
                               "`finesearch index reprepare`, or send the image itself", "features_stale")
            if vec is not None and image_id not in got:
                raise Conflict(f"image {image_id!r} has no matcher features (indexed without the model): "
                               "run `finesearch index reprepare`, or send the image itself", "features_stale")
            if image_id in got and vec is not None:
                return QueryFeatures(torch.from_numpy(vec[1]).to(self.device),
                                     torch.from_numpy(got[image_id][1]).to(self.device), prepared=True)
            raise NotFound(f"no image with id {image_id!r}", "not_found")
        for _ in range(3):  # a concurrent replace may tombstone the row between retrieve and gather: look again
            found = self.store.retrieve(IMAGES, [image_id], with_vectors=True)
            if image_id not in found:
                break
            payload, vec = found[image_id]
            tokens, _, kept = self.indexer.serving_bank(IMAGES).gather_live([payload.get("row", -1)])
            if len(kept):  # its prepared patches: the matcher already did its per-image work at indexing
                return QueryFeatures(torch.from_numpy(vec).to(self.device), tokens[0].to(self.device), prepared=True)
        raise NotFound(f"no image with id {image_id!r}", "not_found")
