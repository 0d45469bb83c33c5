"""Qdrant Edge: the real Qdrant engine in-process, one on-disk shard per collection."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any
from uuid import UUID

import numpy as np
import qdrant_edge as qe

from .base import (
    BASE_INDEXED_FIELDS,
    VECTOR_NAME,
    FilterSpec,
    Hit,
    StoreError,
    StoreLocked,
    VectorStore,
    filter_plan,
    named_vector,
    point_id,
)

_SCHEMA = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
    "datetime": qe.PayloadSchemaType.Datetime,
}


#: qdrant-edge-py 0.9 turns MatchValue(True) into the integer 1, so booleans in user
#: metadata never match. They are mirrored as "true"/"false" keywords under this key
#: and boolean filters are answered from the mirror.
BOOL_MIRROR = "_bool"


def _condition(key: str, value: Any) -> qe.FieldCondition:
    if isinstance(value, bool) and key.startswith("metadata."):
        return qe.FieldCondition(f"{BOOL_MIRROR}.{key[len('metadata.'):]}",
                                 match=qe.MatchValue("true" if value else "false"))
    return qe.FieldCondition(key, match=qe.MatchValue(value))


def edge_filter(spec: FilterSpec | None) -> qe.Filter | None:
    must: list[Any] = []
    for key, how, values in filter_plan(spec):
        if how == "any":
            must.append(qe.FieldCondition(key, match=qe.MatchAny(values)))
        else:
            conds = [_condition(key, v) for v in values]
            must.append(conds[0] if how == "value" else qe.Filter(should=conds))
    return qe.Filter(must=must) if must else None


def _stored_payload(item_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    out = {**payload, "item_id": item_id}
    meta = payload.get("metadata")
    if isinstance(meta, dict):
        flags = {k: "true" if v else "false" for k, v in meta.items() if isinstance(v, bool)}
        if flags:
            out[BOOL_MIRROR] = flags
    return out


def _user_payload(payload: dict[str, Any]) -> dict[str, Any]:
    payload.pop(BOOL_MIRROR, None)
    return payload


def take_ownership(data_dir: Path) -> IO[str]:
    """An exclusive advisory lock on `<data_dir>/.lock`, held for as long as the returned file stays open.

    Qdrant Edge is single-process. Without this, a second opener (an indexer, `index compact`, another
    server) fails deep inside Qdrant with `Can't init WAL: Kind(WouldBlock)`; with it, it is told plainly
    who holds the directory and what to do instead. The kernel drops the lock when the owner dies, even
    by kill -9, so a crash never leaves the directory locked.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fh = open(data_dir / ".lock", "a+")  # held open for the life of the store
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise StoreLocked(
            f"the data directory {data_dir} is in use by a running finesearch server or indexer ({holder}); "
            "the embedded store allows one process at a time. Stop that process first, or send the work to "
            "the running server (REST API; compaction: POST /v1/admin/compact), or use a Qdrant server "
            "(--qdrant-url) for several processes") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    return fh


class EdgeStore(VectorStore):
    backend = "qdrant-edge"

    def __init__(self, root: str | Path, hnsw_m: int = 16, ef_construct: int = 128) -> None:
        self.root = Path(root)
        self._owner: IO[str] | None = take_ownership(self.root.parent)
        self.root.mkdir(parents=True, exist_ok=True)
        self._hnsw = (hnsw_m, ef_construct)
        self._shards: dict[str, qe.EdgeShard] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._open_lock = threading.Lock()

    def _dir(self, name: str) -> Path:
        return self.root / name

    def has_collection(self, name: str) -> bool:
        return name in self._shards or (self._dir(name) / "finesearch.json").is_file()

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is not None:
            return shard
        with self._open_lock:
            if name not in self._shards:
                if not self.has_collection(name):
                    raise StoreError(f"collection {name!r} does not exist in {self.root}")
                try:
                    self._shards[name] = qe.EdgeShard.load(str(self._dir(name)))
                except Exception as exc:
                    raise StoreError(f"cannot open Qdrant Edge shard {self._dir(name)}: {exc}") from exc
                self._locks[name] = threading.Lock()
            return self._shards[name]

    def ensure_collection(self, name: str, dim: int, indexed_fields: Mapping[str, str] | None = None) -> None:
        fields = {**BASE_INDEXED_FIELDS, **(indexed_fields or {})}
        marker = self._dir(name) / "finesearch.json"
        if marker.is_file():
            info = json.loads(marker.read_text())
            if info["dim"] != dim:
                raise StoreError(f"collection {name!r} holds {info['dim']}-d vectors, not {dim}-d")
            shard = self._shard(name)
            new = {k: v for k, v in fields.items() if k not in info.get("indexed", {})}
        else:
            m, ef = self._hnsw
            cfg = qe.EdgeConfig(
                vectors={VECTOR_NAME: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
                hnsw_config=qe.HnswIndexConfig(m=m, ef_construct=ef, full_scan_threshold=10_000),
            )
            shard = qe.EdgeShard.create(str(self._dir(name)), cfg)
            with self._open_lock:
                self._shards[name] = shard
                self._locks[name] = threading.Lock()
            info = {"dim": dim, "indexed": {}}
            new = fields
        for field_name, kind in new.items():
            if kind not in _SCHEMA:
                raise StoreError(f"unknown payload index type {kind!r} for {field_name!r}")
            shard.update(qe.UpdateOperation.create_field_index(field_name, _SCHEMA[kind]))
        info["indexed"] = {**info.get("indexed", {}), **new}
        shard.flush()
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(marker)

    def upsert(self, collection: str, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[Mapping[str, Any]]) -> None:
        if not len(ids):
            return
        vecs = np.asarray(vectors, dtype=np.float32)
        points = [
            qe.Point(point_id(i), {VECTOR_NAME: v}, _stored_payload(i, p))
            for i, v, p in zip(ids, vecs.tolist(), payloads, strict=True)
        ]
        shard = self._shard(collection)
        with self._locks[collection]:
            shard.update(qe.UpdateOperation.upsert_points(points))
            shard.flush()

    def search_batch(self, collection: str, vectors: np.ndarray, limit: int, filter: FilterSpec | None = None,
                     offset: int = 0, with_vectors: bool = False) -> list[list[Hit]]:
        shard = self._shard(collection)
        flt = edge_filter(filter)
        reqs = [
            qe.QueryRequest(limit=limit, offset=offset or None, query=qe.Query.Nearest(v, using=VECTOR_NAME),
                            filter=flt, with_payload=True, with_vector=[VECTOR_NAME] if with_vectors else False)
            for v in np.asarray(vectors, dtype=np.float32).tolist()
        ]
        results = shard.query_batch(qe.QueryBatchRequest(reqs)) if len(reqs) > 1 else [shard.query(reqs[0])]
        return [[Hit(p.payload["item_id"], float(p.score), _user_payload(p.payload),
                     named_vector(p.vector) if with_vectors else None) for p in res] for res in results]

    def retrieve(self, collection: str, ids: Sequence[str], with_vectors: bool = False
                 ) -> dict[str, tuple[dict[str, Any], np.ndarray | None]]:
        if not ids:
            return {}
        shard = self._shard(collection)
        recs = shard.retrieve([point_id(i) for i in ids], True, [VECTOR_NAME] if with_vectors else False)
        out: dict[str, tuple[dict[str, Any], np.ndarray | None]] = {}
        for r in recs:
            out[r.payload["item_id"]] = (_user_payload(r.payload), named_vector(r.vector) if with_vectors else None)
        return out

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        shard = self._shard(collection)
        with self._locks[collection]:
            shard.update(qe.UpdateOperation.delete_points([point_id(i) for i in ids]))
            shard.flush()

    def count(self, collection: str, filter: FilterSpec | None = None) -> int:
        if not self.has_collection(collection):
            return 0
        return int(self._shard(collection).count(qe.CountRequest(exact=True, filter=edge_filter(filter))))

    def scroll(self, collection: str, batch: int = 1024, filter: FilterSpec | None = None) -> Iterator[dict[str, Any]]:
        if not self.has_collection(collection):
            return
        shard = self._shard(collection)
        where = edge_filter(filter)
        offset: str | UUID | int | None = None
        while True:
            recs, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=batch, filter=where, with_payload=True,
                                                         with_vector=False))
            for r in recs:
                yield _user_payload(r.payload)
            if offset is None:
                return

    def optimize(self) -> None:
        for name in list(self._shards):
            with self._locks[name]:
                self._shards[name].optimize()

    def close(self) -> None:
        with self._open_lock:
            for name, shard in self._shards.items():
                with self._locks[name]:
                    shard.flush()
                    shard.close()
            self._shards.clear()
            if self._owner is not None:
                self._owner.close()  # releases the lock
                self._owner = None
