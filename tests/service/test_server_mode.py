"""Server mode with the prepared features on the Qdrant points: the same answers as the token bank, the same
refusal of another matcher's features, the same `reprepare`, and no shared volume needed to search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.items import TextItem
from indexer.pipeline import Indexer
from indexer.preparation import PreparationMismatch, reprepare_index
from indexer.stores import TEXTS, StoreError, open_store
from indexer.stores.server import ServerStore
from training.datasets import CaptionedImage
from training.model.bundle import load_bundle

from .conftest import Server, start_server


@pytest.mark.parametrize("path, body", [
    ("/v1/search/images", {"text": "a red circle left of a blue square", "limit": 10}),
    ("/v1/search/images", {"text": "two small green triangles", "limit": 10, "candidates": 30}),
])
def test_features_in_qdrant_answer_like_the_token_bank(server: Server, qdrant_server: Server, path: str,
                                                       body: dict) -> None:
    with server.client() as a, qdrant_server.client() as b:
        ra, rb = a.post(path, json=body).json()["results"], b.post(path, json=body).json()["results"]
    assert [r["id"] for r in ra] == [r["id"] for r in rb]
    np.testing.assert_allclose([r["fine_score"] for r in ra], [r["fine_score"] for r in rb], atol=1e-5)


def test_image_to_text_by_id_reads_the_query_features_from_qdrant(
        server: Server, qdrant_server: Server, synth: tuple[Path, list[CaptionedImage]]) -> None:
    image_id = synth[1][3].image_id
    with server.client() as a, qdrant_server.client() as b:
        ra = a.post("/v1/search/texts", json={"image_id": image_id, "limit": 5}).json()["results"]
        rb = b.post("/v1/search/texts", json={"image_id": image_id, "limit": 5}).json()["results"]
    assert [r["id"] for r in ra] == [r["id"] for r in rb] and ra[0]["image_id"] == image_id
    np.testing.assert_allclose([r["score"] for r in ra], [r["score"] for r in rb], atol=1e-5)


def test_a_replica_searches_without_the_indexers_data_directory(
        qdrant_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second API replica: the same Qdrant, an empty data directory of its own (no token bank to share)."""
    shared = qdrant_server.engine.store
    assert isinstance(shared, ServerStore)
    monkeypatch.setattr("service.engine.open_store", lambda *a, **kw: ServerStore(":memory:", client=shared.client,
                                                                                   features=True))
    replica = start_server(qdrant_server.settings.model_copy(update={"data_dir": tmp_path / "replica"}))
    try:
        body = {"text": "a red circle left of a blue square", "limit": 5}
        with qdrant_server.client() as a, replica.client() as b:
            ra, rb = a.post("/v1/search/images", json=body).json(), b.post("/v1/search/images", json=body).json()
        assert [r["id"] for r in ra["results"]] == [r["id"] for r in rb["results"]]
        assert rb["results"][0]["fine_score"] is not None
        assert not any((tmp_path / "replica" / "tokens").rglob("seg-*"))  # it holds no token features at all
    finally:
        replica.server.should_exit = True
        replica.thread.join(30)


def test_another_matchers_features_are_refused_and_reprepared_in_place(tmp_path: Path, model_dir: Path) -> None:
    bundle = load_bundle(model_dir, device="cpu")
    store = ServerStore(":memory:", features=True)
    ix = Indexer(bundle.backbone, store, tmp_path, matcher=bundle.matcher)
    ix.index_texts([TextItem("a red circle", id="a"), TextItem("two blue squares above a star", id="b")])
    other = load_bundle(model_dir, device="cpu").matcher
    with torch.no_grad():
        other.word_adapter.down.bias.add_(0.01)  # type: ignore[union-attr]  # a retrained matcher, same backbone
    with pytest.raises(PreparationMismatch, match="2 of the 2 points .*finesearch index reprepare"):
        Indexer(bundle.backbone, store, tmp_path, matcher=other)
    report = reprepare_index(store, tmp_path, bundle.backbone, other)
    assert report[TEXTS]["items"] == 2
    ix2 = Indexer(bundle.backbone, store, tmp_path, matcher=other)  # accepted now
    got = store.retrieve_features(TEXTS, ["a"])["a"]
    fresh = ix2.preparer.prepare("texts", *_raw(ix2, got[0]["row"]), None)  # type: ignore[union-attr]
    np.testing.assert_allclose(got[1].astype(np.float32), fresh.tokens[0, :got[1].shape[0]].numpy(), atol=2e-3)


def _raw(ix: Indexer, row: int) -> tuple:
    tok, mask = ix.banks[TEXTS].gather([row])
    return tok.float(), mask.sum(1).numpy()


def test_features_in_qdrant_need_a_server(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="give --qdrant-url"):
        open_store(tmp_path, features="qdrant")
    with pytest.raises(StoreError, match="features must be one of"):
        open_store(tmp_path, features="disk")
