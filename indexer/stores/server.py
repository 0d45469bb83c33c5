"""Qdrant server through qdrant-client (gRPC preferred): compose and production.

Sharding and replication are Qdrant's own cluster features; this adapter only
sets the shard/replica counts when it creates a collection. With `features=True`
each point also carries the item's prepared matcher features as a named
multivector (no HNSW, on disk, fp16), read in the same call as the candidates:
then API replicas share nothing but the Qdrant cluster (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from .base import (
    BASE_INDEXED_FIELDS,
    FEATURES_FP,
    FEATURES_NAME,
    VECTOR_NAME,
    FilterSpec,
    Hit,
    StoreError,
    VectorStore,
    filter_plan,
    named_vector,
    point_id,
)

_SCHEMA = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
    "datetime": models.PayloadSchemaType.DATETIME,
}


def server_filter(spec: FilterSpec | None) -> models.Filter | None:
    must: list[Any] = []
    for key, how, values in filter_plan(spec):
        if how == "any":
            must.append(models.FieldCondition(key=key, match=models.MatchAny(any=values)))
        else:
            conds = [models.FieldCondition(key=key, match=models.MatchValue(value=v)) for v in values]
            must.append(conds[0] if how == "value" else models.Filter(should=conds))
    return models.Filter(must=must) if must else None


class ServerStore(VectorStore):
    backend = "qdrant-server"

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        prefer_grpc: bool = True,
        prefix: str = "finesearch_",
        shard_number: int | None = None,
        replication_factor: int | None = None,
        timeout: int = 30,
        client: QdrantClient | None = None,
        features: bool = False,
    ) -> None:
        self.holds_features = features
        self.prefix = prefix
        self._shards = shard_number
        self._replicas = replication_factor
        try:
            if client is not None:
                self.client = client
            elif url == ":memory:":
                self.client = QdrantClient(":memory:")
            elif url.startswith("path:"):  # qdrant-client's local mode on disk: tests, one-process setups
                self.client = QdrantClient(path=url[len("path:"):])
            else:
                self.client = QdrantClient(url=url, api_key=api_key, prefer_grpc=prefer_grpc, timeout=timeout)
        except Exception as exc:
            raise StoreError(f"cannot connect to Qdrant at {url}: {exc}") from exc
        self.url = url

    def _name(self, collection: str) -> str:
        return f"{self.prefix}{collection}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"Qdrant at {self.url}: {what} failed: {exc}") from exc

    def has_collection(self, name: str) -> bool:
        return bool(self._call("collection lookup", self.client.collection_exists, self._name(name)))

    def ensure_collection(self, name: str, dim: int, indexed_fields: Mapping[str, str] | None = None) -> None:
        full = self._name(name)
        if not self.has_collection(name):
            vectors = {VECTOR_NAME: models.VectorParams(size=dim, distance=models.Distance.COSINE)}
            if self.holds_features and name != "finesearch_meta":
                # read back by id with the candidates, never searched: no HNSW graph, on disk, half precision
                vectors[FEATURES_NAME] = models.VectorParams(
                    size=dim, distance=models.Distance.DOT, on_disk=True, datatype=models.Datatype.FLOAT16,
                    hnsw_config=models.HnswConfigDiff(m=0),
                    multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM))
            self._call(
                "create collection",
                self.client.create_collection,
                full,
                vectors_config=vectors,
                hnsw_config=models.HnswConfigDiff(m=16, ef_construct=128),
                shard_number=self._shards,
                replication_factor=self._replicas,
            )
        else:
            info = self._call("collection info", self.client.get_collection, full)
            params = info.config.params.vectors
            size = params[VECTOR_NAME].size if isinstance(params, dict) else params.size
            if size != dim:
                raise StoreError(f"collection {full!r} holds {size}-d vectors, not {dim}-d")
            if self.holds_features and name != "finesearch_meta" and (
                    not isinstance(params, dict) or FEATURES_NAME not in params):
                raise StoreError(f"collection {full!r} was created without the {FEATURES_NAME!r} features vector: "
                                 "keep the token bank for it (features=bank) or index into a new collection prefix")
        fields = {**BASE_INDEXED_FIELDS, **(indexed_fields or {})}
        if self.holds_features:
            fields[FEATURES_FP] = "keyword"
        for field_name, kind in fields.items():
            self._call("create payload index", self.client.create_payload_index, full, field_name, _SCHEMA[kind])

    def upsert(self, collection: str, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[Mapping[str, Any]]) -> None:
        if not len(ids):
            return
        vecs = np.asarray(vectors, dtype=np.float32)
        points = [
            models.PointStruct(id=point_id(i), vector={VECTOR_NAME: v}, payload={**p, "item_id": i})
            for i, v, p in zip(ids, vecs.tolist(), payloads, strict=True)
        ]
        self._call("upsert", self.client.upsert, self._name(collection), points=points, wait=True)

    def search_batch(self, collection: str, vectors: np.ndarray, limit: int, filter: FilterSpec | None = None,
                     offset: int = 0, with_vectors: bool = False) -> list[list[Hit]]:
        flt = server_filter(filter)
        reqs = [
            models.QueryRequest(query=v, using=VECTOR_NAME, limit=limit, offset=offset or None, filter=flt,
                                with_payload=True, with_vector=[VECTOR_NAME] if with_vectors else False)
            for v in np.asarray(vectors, dtype=np.float32).tolist()
        ]
        res = self._call("search", self.client.query_batch_points, self._name(collection), requests=reqs)
        return [[Hit(p.payload["item_id"], float(p.score), p.payload, named_vector(p.vector) if with_vectors else None)
                 for p in r.points] for r in res]

    def retrieve(self, collection: str, ids: Sequence[str], with_vectors: bool = False
                 ) -> dict[str, tuple[dict[str, Any], np.ndarray | None]]:
        if not ids:
            return {}
        recs = self._call("retrieve", self.client.retrieve, self._name(collection), [point_id(i) for i in ids],
                          with_payload=True, with_vectors=[VECTOR_NAME] if with_vectors else False)
        out: dict[str, tuple[dict[str, Any], np.ndarray | None]] = {}
        for r in recs:
            out[r.payload["item_id"]] = (r.payload, named_vector(r.vector) if with_vectors else None)
        return out

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        self._call("delete", self.client.delete, self._name(collection),
                   points_selector=models.PointIdsList(points=[point_id(i) for i in ids]), wait=True)

    def count(self, collection: str, filter: FilterSpec | None = None) -> int:
        if not self.has_collection(collection):
            return 0
        res = self._call("count", self.client.count, self._name(collection), count_filter=server_filter(filter),
                         exact=True)
        return int(res.count)

    def scroll(self, collection: str, batch: int = 1024, filter: FilterSpec | None = None) -> Iterator[dict[str, Any]]:
        if not self.has_collection(collection):
            return
        where = server_filter(filter)
        offset = None
        while True:
            recs, offset = self._call("scroll", self.client.scroll, self._name(collection), limit=batch,
                                      offset=offset, scroll_filter=where, with_payload=True, with_vectors=False)
            for r in recs:
                yield r.payload
            if offset is None:
                return

    # --------------------------------------------------------------- features
    def _check_features(self) -> None:
        if not self.holds_features:
            raise self._no_features()

    def upsert_with_features(self, collection: str, ids: Sequence[str], vectors: np.ndarray,
                             payloads: Sequence[Mapping[str, Any]], features: Sequence[np.ndarray]) -> None:
        self._check_features()
        if not len(ids):
            return
        vecs = np.asarray(vectors, dtype=np.float32)
        points = [
            models.PointStruct(id=point_id(i), vector={VECTOR_NAME: v, FEATURES_NAME: _rows(f)},
                               payload={**p, "item_id": i})
            for i, v, p, f in zip(ids, vecs.tolist(), payloads, features, strict=True)
        ]
        self._call("upsert", self.client.upsert, self._name(collection), points=points, wait=True)

    def search_with_features(self, collection: str, vector: np.ndarray, limit: int,
                             filter: FilterSpec | None = None) -> list[Hit]:
        self._check_features()
        res = self._call("search", self.client.query_points, self._name(collection),
                         query=np.asarray(vector, dtype=np.float32).tolist(), using=VECTOR_NAME, limit=limit,
                         query_filter=server_filter(filter), with_payload=True, with_vectors=[FEATURES_NAME])
        return [Hit(p.payload["item_id"], float(p.score), p.payload, None, _features(p.vector)) for p in res.points]

    def retrieve_features(self, collection: str, ids: Sequence[str]) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
        self._check_features()
        if not ids:
            return {}
        recs = self._call("retrieve", self.client.retrieve, self._name(collection), [point_id(i) for i in ids],
                          with_payload=True, with_vectors=[FEATURES_NAME])
        out = {}
        for r in recs:
            f = _features(r.vector)
            if f is not None:
                out[r.payload["item_id"]] = (r.payload, f)
        return out

    def set_features(self, collection: str, ids: Sequence[str], features: Sequence[np.ndarray],
                     payloads: Sequence[Mapping[str, Any]]) -> None:
        self._check_features()
        if not len(ids):
            return
        # one batch: a point's new features and its new fingerprint land together or not at all
        vectors = models.UpdateVectorsOperation(update_vectors=models.UpdateVectors(points=[
            models.PointVectors(id=point_id(i), vector={FEATURES_NAME: _rows(f)})
            for i, f in zip(ids, features, strict=True)]))
        marks = [models.SetPayloadOperation(set_payload=models.SetPayload(payload=dict(p), points=[point_id(i)]))
                 for i, p in zip(ids, payloads, strict=True)]
        self._call("update features", self.client.batch_update_points, self._name(collection), wait=True,
                   update_operations=[vectors, *marks])

    def count_without_features(self, collection: str, fingerprint: str) -> int:
        self._check_features()
        if not self.has_collection(collection):
            return 0
        same = models.FieldCondition(key=FEATURES_FP, match=models.MatchValue(value=fingerprint))
        flt = models.Filter(must_not=[same])
        return int(self._call("count", self.client.count, self._name(collection), count_filter=flt, exact=True).count)

    def close(self) -> None:
        self.client.close()


def _rows(features: np.ndarray) -> list[list[float]]:
    """[L, d] → the multivector's list of rows (Qdrant keeps them in fp16)."""
    return np.asarray(features, dtype=np.float32).tolist()


def _features(v: Any) -> np.ndarray | None:
    """A point's features; None for a point written without them (by an indexer without the model)."""
    rows = v.get(FEATURES_NAME) if isinstance(v, dict) else None
    return np.asarray(rows, dtype=np.float16) if rows else None
