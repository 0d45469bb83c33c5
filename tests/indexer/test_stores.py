"""One behavioural suite for both Qdrant backends.

The server backend is exercised against `QdrantClient(":memory:")`, qdrant-client's
own in-process emulation of the server API: the same client calls as against a real
server, with no server process (CI has no network and no Docker engine).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.stores import IndexMismatch, StoreError, VectorStore, open_store
from indexer.stores.server import ServerStore


@pytest.fixture(params=["edge", "server-emulated"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    s: VectorStore = open_store(tmp_path) if request.param == "edge" else ServerStore(":memory:")
    yield s
    s.close()


def _fill(store: VectorStore, n: int = 30, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    store.ensure_collection("images", dim, {"metadata.rank": "integer"})
    payloads = [{"kind": "image", "metadata": {"colour": ["red", "green", "blue"][i % 3], "rank": i,
                                               "public": i % 2 == 0}} for i in range(n)]
    store.upsert("images", [f"img-{i}" for i in range(n)], vecs, payloads)
    return vecs


def test_search_finds_the_nearest_and_scores_cosine(store: VectorStore) -> None:
    vecs = _fill(store)
    hits = store.search("images", vecs[7], 5)
    assert hits[0].id == "img-7"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    expected = np.argsort(-(unit @ unit[7]))[:5]
    assert [h.id for h in hits] == [f"img-{i}" for i in expected]


def test_batch_search_matches_single_searches(store: VectorStore) -> None:
    vecs = _fill(store)
    batch = store.search_batch("images", vecs[:4], 3)
    assert [[h.id for h in r] for r in batch] == [[h.id for h in store.search("images", v, 3)] for v in vecs[:4]]


def test_filters_and_offset(store: VectorStore) -> None:
    vecs = _fill(store)
    red = store.search("images", vecs[0], 50, {"colour": "red"})
    assert len(red) == 10 and all(h.payload["metadata"]["colour"] == "red" for h in red)
    two = store.search("images", vecs[0], 50, {"colour": ["red", "blue"]})
    assert len(two) == 20
    assert store.count("images", {"rank": [1, 2, 3]}) == 3
    assert store.count("images", {"public": True, "colour": "green"}) == 5
    assert store.count("images", {"public": [True, False]}) == 30
    assert set(red[0].payload["metadata"]) == {"colour", "rank", "public"}
    assert not {"_bool"} & set(red[0].payload)
    full = store.search("images", vecs[0], 10)
    page2 = store.search("images", vecs[0], 5, offset=5)
    assert [h.id for h in page2] == [h.id for h in full[5:]]
    with pytest.raises(ValueError, match="empty list"):
        store.search("images", vecs[0], 5, {"colour": []})


def test_upsert_replaces_retrieve_delete_count(store: VectorStore) -> None:
    vecs = _fill(store)
    store.upsert("images", ["img-3"], vecs[4:5], [{"kind": "image", "metadata": {"colour": "pink"}}])
    assert store.count("images") == 30
    got = store.retrieve("images", ["img-3", "nope"], with_vectors=True)
    assert list(got) == ["img-3"]
    payload, vec = got["img-3"]
    assert payload["metadata"] == {"colour": "pink"} and payload["item_id"] == "img-3"
    np.testing.assert_allclose(vec, vecs[4] / np.linalg.norm(vecs[4]), rtol=1e-5)
    store.delete("images", ["img-3", "img-4"])
    assert store.count("images") == 28
    assert store.existing("images", ["img-3", "img-5"]) == {"img-5"}
    assert len(list(store.scroll("images", batch=7))) == 28


def test_dimension_mismatch_is_refused(store: VectorStore) -> None:
    _fill(store)
    with pytest.raises(StoreError, match="16-d"):
        store.ensure_collection("images", 32)


def test_backbone_binding(store: VectorStore) -> None:
    store.bind_backbone("aaa", 16, {"name": "tiny"})
    store.bind_backbone("aaa", 16, {"name": "tiny"})
    with pytest.raises(IndexMismatch, match="re-index"):
        store.bind_backbone("bbb", 16, {"name": "other"})


def test_missing_collection_counts_zero(store: VectorStore) -> None:
    assert store.count("texts") == 0
    assert not store.has_collection("texts")


def test_edge_store_persists_across_reopen(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    vecs = _fill(s)
    s.close()
    s2 = open_store(tmp_path)
    assert s2.count("images") == 30
    assert s2.search("images", vecs[2], 1)[0].id == "img-2"
    s2.close()


def test_unreachable_server_is_a_clear_error() -> None:
    s = ServerStore("http://127.0.0.1:9", prefer_grpc=False, timeout=2)
    with pytest.raises(StoreError, match="127.0.0.1:9"):
        s.count("images")


def test_search_can_return_the_vectors(store: VectorStore) -> None:
    vecs = _fill(store)
    hits = store.search("images", vecs[5], 3, with_vectors=True)
    np.testing.assert_allclose(hits[0].vector, vecs[5] / np.linalg.norm(vecs[5]), rtol=1e-5)
    assert store.search("images", vecs[5], 1)[0].vector is None


def test_scroll_with_a_filter_and_ids_by_content_hash(store: VectorStore) -> None:
    vecs = _fill(store, n=600)
    store.upsert("images", ["a", "b"], vecs[:2], [{"kind": "image", "sha256": "h1"}, {"kind": "image", "sha256": "h2"}])
    assert {p["item_id"] for p in store.scroll("images", batch=64, filter={"colour": "red"})} == {
        f"img-{i}" for i in range(0, 600, 3)}
    hashes = ["h2", "nope", "h1", "h2"] + [f"x{i}" for i in range(300)]  # more than one look-up's 256
    assert store.ids_where("images", "sha256", hashes) == {"h1": "a", "h2": "b"}
    assert store.ids_where("texts", "sha256", ["h1"]) == {}  # no such collection yet
