"""A stock open_clip checkpoint, no trained matcher: index and serve global-only search, say so, then upgrade
the same index to reranking with a matcher trained on the user's captions, without re-encoding.

The "stock" checkpoint is the demo bundle's tiny backbone written out as a plain open_clip state dict: a file
exactly like one a user would pass with `--pretrained`, and small enough for CI."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from safetensors.torch import save_file

from service.cli import main
from service.config import Settings
from tests.service.conftest import start_server
from tests.service.helpers import browser_page
from training.model.bundle import load_backbone
from training.model.defaults import DEMO_BUNDLE, TINY_MODEL

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stock") / "tiny-clip.safetensors"
    model = load_backbone(DEMO_BUNDLE, device="cpu").model
    save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_stock_checkpoint_serves_global_only_then_upgrades_without_reencoding(
    tmp_path: Path, coco_mini: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FINESEARCH_MODEL", raising=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((coco_mini / "images").glob("*.jpg"))[:6]:
        shutil.copy(p, photos / p.name)
    data = tmp_path / "data"
    stock = ["--backbone", TINY_MODEL, "--pretrained", str(checkpoint)]
    assert main(["index", "images", str(photos), "--id-from", "stem", "--data-dir", str(data), "--no-progress",
                 *stock]) == 0

    srv = start_server(Settings(data_dir=data, backbone=TINY_MODEL, pretrained=str(checkpoint)))
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            model = c.get("/v1/stats").json()["model"]
            assert model["rerank"] is False and model["matcher"] is None
            assert "reranking is unavailable" in model["notice"] and "finesearch train" in model["notice"]
            assert str(checkpoint) not in model["notice"]  # no server path leaks
            r = c.post("/v1/search/images", json={"text": "a man in a kitchen", "limit": 4}).json()
            assert len(r["results"]) == 4 and all(h["fine_score"] is None for h in r["results"])
            assert r["scores"] == "raw" and "reranking is unavailable" in r["notice"]
            first = r["results"][0]["id"]
            similar = c.post("/v1/search/images", json={"image_id": first, "limit": 3}).json()["results"]
            assert len(similar) == 3 and first not in {h["id"] for h in similar}
            extra = sorted((coco_mini / "images").glob("*.jpg"))[10]
            up = c.post("/v1/images", files={"files": (extra.name, extra.read_bytes(), "image/jpeg")},
                        data={"ids": "uploaded"})
            assert up.status_code == 200 and up.json()["items"][0]["id"] == "uploaded", up.text
        _page_says_global_only(srv.url)
    finally:
        srv.stop()

    # the user's own captions (here: a small synthetic set) train a matcher on the same stock backbone
    synth = tmp_path / "synth"
    assert main(["synth", "--out", str(synth), "--train", "48", "--val", "16", "--test", "0", "--seed", "5"]) == 0
    bundle = tmp_path / "mine"
    assert main(["train", "--data", str(synth / "dataset.json"), "--images", str(synth / "images"), "--format",
                 "karpathy", "--out", str(bundle), *stock, "--steps", "4", "--val-every", "4", "--queries", "8",
                 "--candidates", "6", "--calibrate-candidates", "10", "--no-progress"]) == 0
    assert not (bundle / "backbone.safetensors").exists()  # the stock weights stay where they are
    assert main(["index", "reprepare", "--model", str(bundle), "--data-dir", str(data)]) == 0

    srv = start_server(Settings(data_dir=data, model=bundle))
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            stats = c.get("/v1/stats").json()
            assert stats["counts"]["images"] == 7 and stats["model"]["rerank"] is True
            r = c.post("/v1/search/images", json={"text": "a man in a kitchen", "limit": 7}).json()
            assert r["notice"] is None and len(r["results"]) == 7
            assert all(h["fine_score"] is not None for h in r["results"])  # every item, the upload included
    finally:
        srv.stop()


def _page_says_global_only(url: str) -> None:
    """The page in Chromium: the notice names the missing matcher and how to get one, a text query ranks
    globally and says so, and docs/stock-model-page.png shows it."""
    with browser_page(url) as page:
        page.wait_for_function("document.getElementById('stats').textContent.includes('images')")
        assert page.is_visible("#model-notice")
        notice = page.inner_text("#model-notice")
        assert "reranking is unavailable" in notice and "finesearch train" in notice
        page.fill("#query", "a man in a kitchen")
        page.click("#text-form button")
        page.wait_for_function("document.getElementById('image-results').dataset.state === 'global' && "
                               "document.getElementById('t2i-status').textContent.includes('results in')")
        assert "global ranking only" in page.inner_text("#t2i-status")
        assert "raw similarities" in page.inner_text("#score-legend")  # not the calibrated legend
        assert page.is_disabled("#rerank") and page.is_disabled("#explain")
        assert len(page.eval_on_selector_all("#image-results li", "els => els.map(e => e.dataset.id)")) > 0
        page.screenshot(path=str(REPO / "docs" / "stock-model-page.png"), full_page=True)
