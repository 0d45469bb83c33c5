"""One default model for every command: what `finesearch index` builds with no model flags, `finesearch
serve` with none serves, reranked, and says plainly that it is the synthetic demo model."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from service.cli import main
from service.config import Settings
from tests.service.conftest import start_server
from training.model.defaults import DEMO_BUNDLE


def test_index_and_serve_by_default_then_search_the_photos(
    tmp_path: Path, coco_mini: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FINESEARCH_MODEL", raising=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((coco_mini / "images").glob("*.jpg"))[:8]:
        shutil.copy(p, photos / p.name)
    data = tmp_path / "data"
    assert main(["index", "images", str(photos), "--id-from", "stem", "--data-dir", str(data), "--no-progress"]) == 0

    srv = start_server(Settings(data_dir=data))  # no model named: the same default
    try:
        assert srv.engine.bundle.path == DEMO_BUNDLE
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            stats = c.get("/v1/stats").json()
            assert stats["counts"]["images"] == 8
            assert stats["model"]["synthetic"] is True
            assert "synthetic" in stats["model"]["notice"] and "real photos" in stats["model"]["notice"]
            r = c.post("/v1/search/images", json={"text": "a man in a kitchen", "limit": 3})
            assert r.status_code == 200, r.text
            hits = r.json()["results"]
            assert len(hits) == 3 and {h["id"] for h in hits} <= {p.stem for p in photos.iterdir()}
            assert all(h["fine_score"] is not None for h in hits)  # prepared at indexing, reranked at serving
    finally:
        srv.stop()


def test_explicit_backbone_flags_still_choose_a_bare_backbone(tmp_path: Path, coco_mini: Path) -> None:
    """Experts keep their flags: a from-scratch backbone is not the demo's, so the demo server refuses it."""
    from indexer.stores import IndexMismatch

    src = sorted((coco_mini / "images").glob("*.jpg"))[0]
    data = tmp_path / "data"
    assert main(["index", "images", str(src), "--data-dir", str(data), "--no-progress",
                 "--backbone", "finesearch-tiny", "--from-scratch", "--seed", "3"]) == 0
    with pytest.raises(IndexMismatch, match="built with backbone finesearch-tiny"):
        start_server(Settings(data_dir=data))
