"""snapshot → wipe → restore, and migrate into a Qdrant server, both give the same search answers."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import httpx
import pytest

from service.cli import main
from service.config import Settings
from tests.service.conftest import start_server

QUERIES = ["a man in a kitchen", "two dogs on a beach", "a red double decker bus"]


def _answers(settings: Settings) -> dict[str, object]:
    """What a user sees: text→image pages (ids, scores), captions of an image, similar images, an original."""
    srv = start_server(settings)
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            out: dict[str, object] = {"stats": c.get("/v1/stats").json()["counts"]}
            for q in QUERIES:
                res = c.post("/v1/search/images", json={"text": q, "limit": 5}).json()["results"]
                out[q] = [(r["id"], r["score"], r["fine_score"]) for r in res]
            out["i2t"] = [(r["id"], r["score"]) for r in c.post(
                "/v1/search/texts", json={"image_id": "397133", "limit": 5}).json()["results"]]
            out["i2i"] = [r["id"] for r in c.post("/v1/search/images", json={"image_id": "397133"}).json()["results"]]
            out["upload"] = c.get("/v1/images/uploaded/content").content
        return out
    finally:
        srv.stop()


def _build_index(coco_mini: Path, settings: Settings, limit: int, store_args: list[str]) -> None:
    """The first `limit` captioned photos through `index dataset`, then one upload through the API (its
    original lives in the blob store)."""
    assert main(["index", "dataset", str(coco_mini / "captions.json"), "--images", str(coco_mini / "images"),
                 "--format", "coco", "--limit", str(limit), "--data-dir", str(settings.data_dir), "--no-progress",
                 *store_args]) == 0
    srv = start_server(settings)
    try:
        photo = sorted((coco_mini / "images").glob("*.jpg"))[40]
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            r = c.post("/v1/images", files={"files": (photo.name, photo.read_bytes(), "image/jpeg")},
                       data={"ids": "uploaded"})
            assert r.status_code == 200 and r.json()["items"][0]["id"] == "uploaded"
    finally:
        srv.stop()


@pytest.fixture()
def index(tmp_path: Path, coco_mini: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("FINESEARCH_MODEL", raising=False)
    data = tmp_path / "data"
    _build_index(coco_mini, Settings(data_dir=data), 30, [])
    return data


def test_snapshot_wipe_restore_gives_identical_answers(index: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    before = _answers(Settings(data_dir=index))
    snap = tmp_path / "backup.tar"
    assert main(["snapshot", "create", "--out", str(snap), "--data-dir", str(index)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["counts"] == {"images": 31, "texts": 150}
    with tarfile.open(snap) as tar:
        names = tar.getnames()
    assert "manifest.json" in names and any(n.startswith("blobs/") for n in names)
    assert any(n.startswith("tokens/images.prepared") for n in names)
    shutil.rmtree(index)
    assert main(["snapshot", "restore", str(snap), "--data-dir", str(index)]) == 0
    assert _answers(Settings(data_dir=index)) == before
    # a second restore over the restored index is refused, and changes nothing
    assert main(["snapshot", "restore", str(snap), "--data-dir", str(index)]) == 2
    assert "restore needs an empty index" in capsys.readouterr().err
    assert _answers(Settings(data_dir=index)) == before


def test_a_broken_snapshot_is_refused_before_anything_is_created(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all")
    assert main(["snapshot", "restore", str(bad), "--data-dir", str(tmp_path / "data")]) == 2
    assert "not a complete finesearch snapshot" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_migrate_into_a_qdrant_server_is_resumable_and_answers_the_same(
    index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _answers(Settings(data_dir=index))
    url = f"path:{tmp_path / 'qdrant-server'}"  # qdrant-client's own Qdrant, on disk, in this process
    assert main(["migrate", "--to", url, "--data-dir", str(index)]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[-2])
    assert first["images"]["copied"] == 31 and first["texts"]["copied"] == 150
    assert main(["migrate", "--to", url, "--data-dir", str(index)]) == 0  # resumed: nothing left to copy
    again = json.loads(capsys.readouterr().out.splitlines()[-2])
    assert again["images"] == {"copied": 0, "already_there": 31, "target_count": 31}
    assert _answers(Settings(data_dir=index, qdrant_url=url)) == before


def test_a_server_store_with_its_features_on_the_points_snapshots_and_restores(
    tmp_path: Path, coco_mini: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """features=qdrant: the prepared features live on the Qdrant points, not in the token bank; the snapshot
    carries them and a restore into another server store answers the same, reranking included."""
    monkeypatch.delenv("FINESEARCH_MODEL", raising=False)
    data, url = tmp_path / "data", f"path:{tmp_path / 'qdrant-a'}"
    store = ["--qdrant-url", url, "--features", "qdrant"]
    settings = Settings(data_dir=data, qdrant_url=url, features="qdrant")
    _build_index(coco_mini, settings, 12, store)
    before = _answers(settings)
    assert any(fine is not None for q in QUERIES for _, _, fine in before[q])  # reranked: features were read
    snap = tmp_path / "backup.tar"
    assert main(["snapshot", "create", "--out", str(snap), "--data-dir", str(data), *store]) == 0
    with tarfile.open(snap) as tar:
        assert any(n.endswith(".features.npz") for n in tar.getnames())
    capsys.readouterr()
    # into the token bank's layout it is refused, saying why, and nothing is created
    bank_dir = tmp_path / "bank"
    assert main(["snapshot", "restore", str(snap), "--data-dir", str(bank_dir)]) == 2
    assert "restore it with the same --features" in capsys.readouterr().err
    assert not (bank_dir / "tokens").exists()
    data2, url2 = tmp_path / "data2", f"path:{tmp_path / 'qdrant-b'}"
    assert main(["snapshot", "restore", str(snap), "--data-dir", str(data2), "--qdrant-url", url2,
                 "--features", "qdrant"]) == 0
    assert _answers(Settings(data_dir=data2, qdrant_url=url2, features="qdrant")) == before
