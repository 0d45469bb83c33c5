"""What a search asks of the model: query encoding with the query's own preparation (in the same model
call, when the search reranks), the matcher's rerank of every candidate in one call (the similarity
interaction alone), and explanations of a page. The engine (engine.py) decides what to search and
runs these on its model thread, micro-batched (batching.py); nothing here knows about stores or requests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from indexer.preparation import Preparer
from indexer.tokenbank import Fetched
from training.model.backbone import Backbone
from training.model.explain import explain_pairs
from training.model.matcher import Matcher, PreparedImages, PreparedTexts
from training.model.tokens import pad_words

PreparedQuery = PreparedTexts | PreparedImages


@dataclass
class QueryFeatures:
    """Query features on the model device: global [d] and tokens [n, d] (an indexed image's come prepared);
    `ready`: the query prepared for the matcher (one row; a caption padded to max_words), when it was asked for."""

    globals: torch.Tensor
    tokens: torch.Tensor
    prepared: bool = False
    ready: PreparedQuery | None = None


@dataclass
class RerankJob:
    direction: str  # "t2i": text query vs image candidates; "i2t": image query vs text candidates
    query: QueryFeatures  # prepared by its encoding call (`ready`), or by `Scorer.rerank` (an indexed image)
    tokens: torch.Tensor  # candidates' prepared features [k, L, d] (fp16)
    mask: torch.Tensor  # [k, L]
    extras: torch.Tensor | None  # [k, e]: text candidates' LDA weights
    scores: torch.Tensor  # [k] global cosines from Qdrant


class Scorer:
    """The model's side of a search, run on the engine's model thread: encoding queries, preparing them as
    the indexer prepared the items, and the matcher's one scoring call over every candidate.

    `matcher` is None for a stock backbone (global-only search): then only the encoders are used.
    """

    def __init__(self, backbone: Backbone, matcher: Matcher | None) -> None:
        self.backbone, self._matcher = backbone, matcher
        self.device = backbone.device

    @property
    def matcher(self) -> Matcher:
        """Only the rerank and explain paths ask, and a stock backbone never reaches them."""
        assert self._matcher is not None, "a stock backbone has no matcher"
        return self._matcher

    def warm(self, preparer: Preparer | None) -> None:
        """One tiny pass through every model path, so the first request pays no lazy-init cost."""
        q = self.encode_text_queries([("warm up", True)])[0]
        img = self.encode_image_queries([(np.zeros((self.backbone.image_size,) * 2 + (3,), np.uint8), True)])[0]
        if preparer is None:  # a stock backbone: nothing to rerank with
            return
        pi = preparer.prepare("images", img.tokens[None], np.array([img.tokens.shape[0]]), img.globals[None])
        pt = preparer.prepare("texts", q.tokens[None], np.array([q.tokens.shape[0]]), None)
        ones = lambda p: torch.ones(1, p.tokens.shape[1], dtype=torch.bool)  # noqa: E731
        self.rerank([RerankJob("t2i", q, pi.tokens.half(), ones(pi), None, torch.zeros(1))])
        self.rerank([RerankJob("i2t", img, pt.tokens.half(), ones(pt), pt.extras, torch.zeros(1))])

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> list[QueryFeatures]:
        f = self.backbone.encode_texts(texts)
        n = f.mask.sum(1).tolist()
        return [QueryFeatures(f.globals[i], f.tokens[i, : n[i]]) for i in range(len(texts))]

    @torch.inference_mode()
    def encode_images(self, pixels: list[np.ndarray]) -> list[QueryFeatures]:
        f = self.backbone.encode_images(np.stack(pixels))
        return [QueryFeatures(f.globals[i], f.tokens[i]) for i in range(len(pixels))]

    def encode_text_queries(self, items: list[tuple[str, bool]]) -> list[QueryFeatures]:
        """(caption, will rerank) → its features, prepared for the matcher when it will rerank: one model-thread
        call for the micro-batch. (Preparing on the model thread while a worker thread recalls the candidates
        was measured too: on 2 cores the two threads' Python contends for the GIL and it gained nothing.)"""
        return self._with_ready("t2i", self.encode_texts([t for t, _ in items]), [r for _, r in items])

    def encode_image_queries(self, items: list[tuple[np.ndarray, bool]]) -> list[QueryFeatures]:
        """(pixels, will rerank) → its features, prepared for the matcher when it will rerank."""
        return self._with_ready("i2t", self.encode_images([p for p, _ in items]), [r for _, r in items])

    def _with_ready(self, direction: str, queries: list[QueryFeatures], want: list[bool]) -> list[QueryFeatures]:
        """`queries` with those `want` marks prepared for the matcher (in place), in one matcher call."""
        picked = [k for k, w in enumerate(want) if w and self._matcher is not None]
        if picked:
            for k, ready in zip(picked, self.prepare_queries(direction, [queries[k] for k in picked]), strict=True):
                queries[k] = replace(queries[k], ready=ready)
        return queries

    @torch.inference_mode()
    def prepare_queries(self, direction: str, queries: list[QueryFeatures]) -> list[PreparedQuery]:
        """Queries of one direction → each prepared as the indexer prepared the items it is compared with: a
        caption's word context, adapter and LDA weights (t2i); an image's positions, patch context and adapter
        (i2t; an indexed image's come prepared from the bank). One matcher call for the whole batch."""
        if not queries:
            return []
        batch = self._text_queries(queries) if direction == "t2i" else self._image_queries(queries)
        return [batch.take(slice(j, j + 1)) for j in range(len(queries))]

    def _text_queries(self, queries: list[QueryFeatures]) -> PreparedTexts:
        """Captions typed at query time, prepared as the bank's captions were at indexing (padded to
        max_words, so captions prepared in different calls can be joined)."""
        words = pad_sequence([q.tokens.float() for q in queries], batch_first=True)
        lengths = torch.tensor([q.tokens.shape[0] for q in queries])
        mask = torch.arange(words.shape[1])[None] < lengths[:, None]
        glob = torch.stack([q.globals for q in queries])
        return self.matcher.prepare_texts(words.to(self.device), mask.to(self.device), glob.to(self.device))

    def _image_queries(self, queries: list[QueryFeatures]) -> PreparedImages:
        """Query images prepared here, except indexed ones, whose prepared patches the bank already holds."""
        dev = self.device
        patches = [q.tokens.to(dev).float() for q in queries]
        fresh = [k for k, q in enumerate(queries) if not q.prepared]
        if fresh:
            done = self.matcher.prepare_images(torch.stack([queries[k].tokens for k in fresh]).to(dev),
                                               torch.stack([queries[k].globals for k in fresh]).to(dev)).patches
            for j, k in enumerate(fresh):
                patches[k] = done[j]
        return PreparedImages.of_patches(torch.stack(patches))

    def _stored_texts(self, tokens: torch.Tensor, mask: torch.Tensor, extras: torch.Tensor | None) -> PreparedTexts:
        """Captions prepared at indexing, as the bank returns them (text globals only enter the global term,
        which Qdrant already scored)."""
        dev = self.device
        return self.matcher.texts_from_words(tokens.to(dev), mask.to(dev), None,
                                             None if extras is None else extras.to(dev)).trimmed()

    def _ready(self, direction: str, queries: list[QueryFeatures]) -> list[PreparedQuery]:
        """The queries as prepared for the matcher: by their encoding call, or here (an indexed image as the
        query, whose patches the bank holds prepared)."""
        ready = self._with_ready(direction, list(queries), [q.ready is None for q in queries])
        return [q.ready for q in ready]  # type: ignore[misc]

    @torch.inference_mode()
    def rerank(self, jobs: list[RerankJob]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every candidate of every job scored in one matcher call per direction."""
        dev = self.device
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(jobs)
        for direction in ("t2i", "i2t"):
            idx = [i for i, j in enumerate(jobs) if j.direction == direction]
            if not idx:
                continue
            group = [jobs[i] for i in idx]
            ready = self._ready(direction, [j.query for j in group])
            sizes = [j.tokens.shape[0] for j in group]
            s_global = torch.cat([j.scores for j in group]).to(dev)
            owner = None if len(group) == 1 else torch.repeat_interleave(  # one query: paired by broadcast
                torch.arange(len(group), device=dev), torch.tensor(sizes, device=dev))
            if direction == "t2i":  # the captions were prepared when encoded, the images at indexing
                queries = PreparedTexts.cat(ready).trimmed()  # type: ignore[arg-type]
                fused, fine = self.matcher.rerank(queries, PreparedImages.of_patches(
                    torch.cat([j.tokens for j in group]).to(dev)), owner, s_global)
            else:  # the images were prepared when encoded (or at indexing: an indexed image), the captions at indexing
                width = max(int(j.tokens.shape[1]) for j in group)
                padded = [pad_words(j.tokens, j.mask, width) for j in group]
                lda = torch.cat([j.extras for j in group])  # type: ignore[misc]
                stored = self._stored_texts(torch.cat([w for w, _ in padded]), torch.cat([k for _, k in padded]), lda)
                images = PreparedImages.cat(ready)  # type: ignore[arg-type]
                fused, fine = self.matcher.rerank(images, stored, owner, s_global)
            for i, f, p in zip(idx, fused.float().cpu().split(sizes), fine.float().cpu().split(sizes), strict=True):
                out[i] = (f, p)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def explain(self, direction: str, query: QueryFeatures, found: Fetched, page: list[int],
                results: list[dict[str, Any]], text: str | None) -> list[dict[str, Any]]:
        """Each result of the page explained (training/model/explain.py), from one matcher call over it."""
        dev = self.device
        prepared = self._ready(direction, [query])[0]
        idx = torch.tensor(page, device=found.tokens.device)
        if direction == "t2i":
            txt = prepared.trimmed().expand(len(page))  # type: ignore[union-attr]
            img = PreparedImages.of_patches(found.tokens[idx].to(dev))
            pieces = [self.backbone.word_pieces(text or "", query.tokens.shape[0])] * len(page)
        else:
            img = prepared.expand(len(page))
            extras = found.extras[idx] if found.extras is not None else None
            txt = self._stored_texts(found.tokens[idx], found.mask[idx], extras)
            lengths = found.mask[idx].sum(1).tolist()
            pieces = [self.backbone.word_pieces(r.get("text") or "", int(n)) for r, n in zip(results, lengths,
                                                                                         strict=True)]
        return explain_pairs(self.matcher, img, txt, self.backbone.grid, pieces)  # type: ignore[arg-type]
