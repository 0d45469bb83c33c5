"""The one small interface both Qdrant backends implement.

Callers speak in item ids (any string the user chose) and numpy vectors; the
backends translate to Qdrant point ids (UUIDv5 of the item id), named vectors
and filters. Index-wide facts (backbone fingerprint, dimension) live in a tiny
meta collection, so they travel with the data on either backend.
"""

from __future__ import annotations

import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

VECTOR_NAME = "global"
#: The named multivector holding each point's prepared matcher features (server mode, `features="qdrant"`).
FEATURES_NAME = "tokens"
#: Payload fields of a point whose features live in the store: the preparation's fingerprint, per-item extras.
FEATURES_FP, FEATURES_EXTRAS = "features_fp", "features_extras"
IMAGES = "images"
TEXTS = "texts"
META_COLLECTION = "finesearch_meta"
_NAMESPACE = uuid.UUID("6f1d5c52-3a77-4c1e-9a0e-5f1c1b8c2d11")
#: Payload fields every collection indexes for filtering.
# `sha256` (an image's content hash) is how a photo indexed under two ids is recognised as one item
BASE_INDEXED_FIELDS: dict[str, str] = {"item_id": "keyword", "image_id": "keyword", "kind": "keyword",
                                       "sha256": "keyword"}

FilterSpec = Mapping[str, Any]


class StoreError(RuntimeError):
    """The store is unreachable or refused an operation; the message names the store."""


class StoreLocked(StoreError):
    """Another process owns the embedded store of this data directory."""


class IndexMismatch(StoreError):
    """The index was built with another backbone than the one offered."""


def point_id(item_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, item_id))


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]
    vector: np.ndarray | None = None
    features: np.ndarray | None = None  # [L, d] prepared matcher features, from a store that holds them


def named_vector(v: Any) -> np.ndarray | None:
    """The global vector out of whatever shape a Qdrant client returns it in."""
    if v is None:
        return None
    return np.asarray(v[VECTOR_NAME] if isinstance(v, dict) else v, dtype=np.float32)


_PLAIN_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+(\[\d*\])?$")


def json_path(name: str) -> str:
    """A filter key as a Qdrant JSON path: plain segments as they are, any other segment quoted.

    Qdrant refuses paths such as `a b`, `x+`, `..` or `a.` (a 500 if passed on); quoting makes every metadata
    key that holds no '"' and no control character addressable.
    """
    out = []
    for seg in name.split("."):
        if not seg:
            raise ValueError(f"filter key {name!r} has an empty segment (a leading, trailing or doubled '.')")
        if _PLAIN_SEGMENT.match(seg):
            out.append(seg)
        elif '"' in seg or "\\" in seg or any(ord(c) < 32 or ord(c) == 127 for c in seg):
            raise ValueError(f"filter key {name!r} may not hold '\"', '\\' or control characters")
        else:
            out.append(f'"{seg}"')
    return ".".join(out)


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def normalise_filter(spec: FilterSpec | None) -> list[tuple[str, list[Any]]]:
    """{field: value | [values]} → [(payload key, allowed values)].

    Bare field names address user metadata (stored under `metadata.`); the
    reserved names `kind`, `item_id` and `image_id` address the item itself.
    """
    if not spec:
        return []
    out: list[tuple[str, list[Any]]] = []
    for field_name, value in spec.items():
        if not isinstance(field_name, str) or not field_name:
            raise ValueError("filter keys must be non-empty strings")
        if not _encodable(field_name):
            raise ValueError("a filter key holds a lone surrogate (invalid Unicode)")
        key = json_path(field_name) if field_name in BASE_INDEXED_FIELDS or "." in field_name else \
            f"metadata.{json_path(field_name)}"
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ValueError(f"filter on {field_name!r} has an empty list of values")
        for v in values:
            if not isinstance(v, (str, int, bool)) or isinstance(v, float):
                raise ValueError(f"filter values must be strings, integers or booleans; {field_name!r} has {v!r}")
            if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63:
                raise ValueError(f"filter on {field_name!r}: integers must lie in the 64-bit range "
                                 "[-2**63, 2**63-1]")
            if isinstance(v, str) and not _encodable(v):
                raise ValueError(f"filter on {field_name!r}: a value holds a lone surrogate (invalid Unicode)")
        out.append((key, values))
    return out


def filter_plan(spec: FilterSpec | None) -> list[tuple[str, str, list[Any]]]:
    """(key, how, values) per filter entry; how is "value" (one), "any" (same-typed list) or "should" (mixed)."""
    plan = []
    for key, values in normalise_filter(spec):
        if len(values) == 1:
            plan.append((key, "value", values))
        elif all(isinstance(v, str) for v in values) or all(
            isinstance(v, int) and not isinstance(v, bool) for v in values
        ):
            plan.append((key, "any", values))
        else:
            plan.append((key, "should", values))
    return plan


class VectorStore(ABC):
    """Global vectors + payloads, per collection. Both backends pass the same test-suite."""

    backend: str = "?"
    #: Whether each point carries its prepared matcher features (a named multivector), so that search
    #: returns candidates and their features in one call and API replicas need no shared token bank.
    holds_features: bool = False

    @abstractmethod
    def ensure_collection(self, name: str, dim: int, indexed_fields: Mapping[str, str] | None = None) -> None: ...

    @abstractmethod
    def upsert(self, collection: str, ids: Sequence[str], vectors: np.ndarray,
               payloads: Sequence[Mapping[str, Any]]) -> None: ...

    @abstractmethod
    def search_batch(self, collection: str, vectors: np.ndarray, limit: int, filter: FilterSpec | None = None,
                     offset: int = 0, with_vectors: bool = False) -> list[list[Hit]]: ...

    @abstractmethod
    def retrieve(self, collection: str, ids: Sequence[str], with_vectors: bool = False
                 ) -> dict[str, tuple[dict[str, Any], np.ndarray | None]]: ...

    @abstractmethod
    def delete(self, collection: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def count(self, collection: str, filter: FilterSpec | None = None) -> int: ...

    @abstractmethod
    def scroll(self, collection: str, batch: int = 1024, filter: FilterSpec | None = None) -> Iterator[dict[str, Any]]:
        """Every payload in the collection, or those the filter passes (maintenance, audits, look-ups)."""

    def ids_where(self, collection: str, field: str, values: Sequence[str]) -> dict[str, str]:
        """value → id of an item whose reserved payload field `field` holds it (one indexed look-up per 256)."""
        out: dict[str, str] = {}
        unique = list(dict.fromkeys(values))
        for lo in range(0, len(unique), 256):
            for p in self.scroll(collection, filter={field: unique[lo:lo + 256]}):
                out.setdefault(p[field], p["item_id"])
        return out

    @abstractmethod
    def has_collection(self, name: str) -> bool: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release resources."""

    # ------------------------------------------- features (stores that hold them)
    def _no_features(self) -> StoreError:
        return StoreError(f"the {self.backend} store keeps no matcher features (that is the token bank's job here)")

    def upsert_with_features(self, collection: str, ids: Sequence[str], vectors: np.ndarray,
                             payloads: Sequence[Mapping[str, Any]], features: Sequence[np.ndarray]) -> None:
        raise self._no_features()

    def search_with_features(self, collection: str, vector: np.ndarray, limit: int,
                             filter: FilterSpec | None = None) -> list[Hit]:
        raise self._no_features()

    def retrieve_features(self, collection: str, ids: Sequence[str]) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
        raise self._no_features()

    def set_features(self, collection: str, ids: Sequence[str], features: Sequence[np.ndarray],
                     payloads: Sequence[Mapping[str, Any]]) -> None:
        """Replace the features (and merge these payload fields) of existing points: `index reprepare`."""
        raise self._no_features()

    def count_without_features(self, collection: str, fingerprint: str) -> int:
        """Points whose features were not prepared under `fingerprint` (another matcher, or none)."""
        raise self._no_features()

    # ----------------------------------------------------------- derived
    def search(self, collection: str, vector: np.ndarray, limit: int, filter: FilterSpec | None = None,
               offset: int = 0, with_vectors: bool = False) -> list[Hit]:
        vec = np.asarray(vector, dtype=np.float32)[None, :]
        return self.search_batch(collection, vec, limit, filter, offset, with_vectors)[0]

    def existing(self, collection: str, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are already stored: resumable indexing asks this per batch."""
        if not ids:
            return set()
        return set(self.retrieve(collection, ids))

    def get_meta(self) -> dict[str, Any] | None:
        if not self.has_collection(META_COLLECTION):
            return None
        found = self.retrieve(META_COLLECTION, ["index"])
        return found["index"][0].get("meta") if "index" in found else None

    def set_meta(self, meta: Mapping[str, Any]) -> None:
        self.ensure_collection(META_COLLECTION, 1, {})
        self.upsert(META_COLLECTION, ["index"], np.ones((1, 1), dtype=np.float32),
                    [{"item_id": "index", "meta": dict(meta)}])

    def bind_backbone(self, fingerprint: str, dim: int, description: Mapping[str, Any]) -> None:
        """Record the backbone on first use; refuse a different one afterwards."""
        meta = self.get_meta()
        if meta is None:
            self.set_meta({"fingerprint": fingerprint, "dim": dim, "backbone": dict(description)})
            return
        if meta.get("fingerprint") != fingerprint:
            raise IndexMismatch(
                f"this index was built with backbone {meta.get('backbone', {}).get('name')} "
                f"(fingerprint {meta.get('fingerprint')}), but the model offered has fingerprint {fingerprint}. "
                "Serve the model bundle the index was built with, or re-index into a new data directory "
                "(or a new collection prefix) with this model"
            )
