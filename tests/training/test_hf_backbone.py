"""`--backbone hf:DIR`: a Hugging Face CLIP or SigLIP directory gives the open_clip wrapper's outputs, and
works in training, bundles, indexing and serving. The directories are tiny random models written to a
temporary folder by the test itself (tests/hf_dirs.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from service.cli import main
from service.config import Settings
from tests.hf_dirs import tiny_hf_dir
from tests.service.conftest import start_server
from training.model.backbone import Backbone, BackboneError
from training.model.bundle import load_bundle


@pytest.fixture(scope="module", params=["clip", "siglip"])
def hf_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_hf_dir(tmp_path_factory.mktemp(f"hf-{request.param}"), request.param)


def _pooled(out: object) -> torch.Tensor:
    return out.pooler_output if hasattr(out, "pooler_output") else out  # type: ignore[attr-defined,return-value]


def test_outputs_are_the_models_own_joint_space(hf_dir: Path) -> None:
    b = Backbone.load(f"hf:{hf_dir}", device="cpu")
    assert b.name in ("hf:clip", "hf:siglip") and b.grid == (4, 4)
    imgs = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    f = b.encode_images(imgs)
    assert f.tokens.shape == (3, 16, b.embed_dim)
    with torch.inference_mode():
        ref = _pooled(b.model.get_image_features(pixel_values=b.pixels(imgs)))
    torch.testing.assert_close(f.globals, F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-4)
    texts = ["a red circle", "a small blue square left of a large yellow triangle"]
    t = b.encode_texts(texts)
    with torch.inference_mode():
        ref = _pooled(b.model.get_text_features(input_ids=b.tokenize(texts)))
    torch.testing.assert_close(t.globals, F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-4)
    assert t.mask.sum(1).tolist() == [3, 10]  # the word positions, without start/end tokens
    torch.testing.assert_close(t.tokens.norm(dim=-1)[t.mask], torch.ones(13), atol=1e-5, rtol=0)
    alone = b.encode_texts(texts[:1])  # padding beside a longer caption changes nothing
    torch.testing.assert_close(alone.tokens[0, :3], t.tokens[0, :3], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone.globals[0], t.globals[0], atol=1e-5, rtol=1e-4)
    pieces = b.word_pieces("A red Circle!", 5)
    assert [(p.text, p.span) for p in pieces[:3]] == [("a", (0, 1)), ("red", (2, 5)), ("circle", (6, 12))]
    assert Backbone.load(b.name, str(hf_dir), device="cpu").fingerprint == b.fingerprint  # as a bundle records it


def test_a_directory_that_is_not_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="not a Hugging Face model directory"):
        Backbone.load(f"hf:{tmp_path}", device="cpu")


def test_train_index_serve_with_a_transformers_backbone(hf_dir: Path, tmp_path: Path, coco_mini: Path) -> None:
    synth = tmp_path / "synth"
    assert main(["synth", "--out", str(synth), "--train", "48", "--val", "16", "--test", "0", "--size", "32"]) == 0
    common = ["--data", str(synth / "dataset.json"), "--images", str(synth / "images"), "--format", "karpathy",
              "--backbone", f"hf:{hf_dir}", "--steps", "4", "--val-every", "4", "--queries", "8", "--candidates",
              "6", "--calibrate-candidates", "10", "--no-progress"]
    frozen, tuned = tmp_path / "frozen", tmp_path / "tuned"
    assert main(["train", *common, "--out", str(frozen)]) == 0
    assert not (frozen / "backbone.safetensors").exists()  # the directory's weights, recorded by fingerprint
    assert main(["train", *common, "--out", str(tuned), "--unfreeze-blocks", "1"]) == 0
    assert (tuned / "backbone.safetensors").exists()  # fine-tuned: the bundle ships its backbone
    stock = Backbone.load(f"hf:{hf_dir}", device="cpu")
    a, b = load_bundle(frozen, device="cpu").backbone, load_bundle(tuned, device="cpu").backbone  # fingerprints checked
    assert a.name == b.name == stock.name and a.fingerprint == stock.fingerprint != b.fingerprint

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((coco_mini / "images").glob("*.jpg"))[:6]:
        shutil.copy(p, photos / p.name)
    data = tmp_path / "data"
    assert main(["index", "images", str(photos), "--id-from", "stem", "--model", str(frozen), "--data-dir", str(data),
                 "--no-progress"]) == 0
    srv = start_server(Settings(data_dir=data, model=frozen))
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            stats = c.get("/v1/stats").json()
            assert stats["backbone"]["name"].startswith("hf:") and str(hf_dir) not in str(stats)
            r = c.post("/v1/search/images", json={"text": "a man in a kitchen", "limit": 6, "explain": True})
            assert r.status_code == 200, r.text
            hits = r.json()["results"]
            assert len(hits) == 6 and all(h["fine_score"] is not None for h in hits)
            ex = hits[0]["explanation"]
            assert ex["grid"] == [4, 4] and [w["text"] for w in ex["words"]][:3] == ["a", "man", "in"]
    finally:
        srv.stop()
