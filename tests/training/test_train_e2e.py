"""Train a tiny backbone and matcher for a few steps, save the bundle, reload it, score identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from service.cli import main
from training.datasets import read_dataset
from training.features import extract
from training.model.bundle import BundleError, load_backbone, load_bundle


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("e2e")
    data = root / "synth"
    assert main(["synth", "--out", str(data), "--train", "96", "--val", "24", "--test", "24", "--seed", "3"]) == 0
    out = root / "bundle"
    rc = main(["train", "--data", str(data / "dataset.json"), "--images", str(data / "images"), "--format",
               "karpathy", "--out", str(out), "--backbone", "finesearch-tiny", "--from-scratch", "--clip-steps", "6",
               "--clip-batch", "32", "--steps", "6", "--val-every", "3", "--queries", "8", "--candidates", "6",
               "--calibrate-candidates", "10", "--no-progress", "--matcher", '{"top_k": 16, "num_samples": 20}'])
    assert rc == 0
    return data, out


def test_bundle_round_trip_scores_identically(tiny_run: tuple[Path, Path]) -> None:
    data, out = tiny_run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["backbone"]["weights"] == "backbone.safetensors"
    assert cfg["matcher"]["num_samples"] == 20 and cfg["matcher"]["top_k"] == 16
    assert cfg["training"]["backbone"]["steps"] == 6 and cfg["training"]["matcher"]["steps"] == 6
    assert [h["step"] for h in cfg["training"]["matcher"]["history"]] == [3, 6]
    assert "val" in cfg["training"]["backbone"] and set(cfg["training"]["fusion"]["shares"]) == {"t2i", "i2t"}
    assert cfg["training"]["backbone"]["warning"] == "near chance"  # 6 steps teach it nothing, and it says so
    items = read_dataset(data / "dataset.json", "karpathy", "test")
    a, b = load_bundle(out, device="cpu"), load_bundle(out, device="cpu")
    assert a.backbone.fingerprint == cfg["backbone"]["fingerprint"]
    fa = extract(a.backbone, items, data / "images")
    fb = extract(b.backbone, items, data / "images")
    torch.testing.assert_close(fa.img_tok, fb.img_tok, rtol=0, atol=0)
    with torch.no_grad():
        sa = a.matcher.score_matrix(a.matcher.prepare_images(fa.img_tok, fa.img_glob),
                                    a.matcher.prepare_texts(fa.txt_tok, fa.txt_mask, fa.txt_glob), "t2i")
        sb = b.matcher.score_matrix(b.matcher.prepare_images(fb.img_tok, fb.img_glob),
                                    b.matcher.prepare_texts(fb.txt_tok, fb.txt_mask, fb.txt_glob), "t2i")
    assert torch.equal(sa, sb)
    assert bool(a.matcher.calibrated) and torch.equal(a.matcher.calibration, b.matcher.calibration)


def test_eval_command_writes_all_three_rankers(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, out = tiny_run
    res_file = tmp_path / "res.json"
    rc = main(["eval", "--model", str(out), "--data", str(data / "dataset.json"), "--images", str(data / "images"),
               "--format", "karpathy", "--split", "test", "--candidates", "10", "--json", str(res_file),
               "--no-progress", "--device", "cpu"])
    assert rc == 0
    res = json.loads(res_file.read_text())
    for ranker in ("global", "two_stage", "exhaustive"):
        assert set(res[ranker]["i2t"]) == {"r1", "r5", "r10"} and "seconds" in res[ranker]
        assert 0 <= res[ranker]["rsum"] <= 600
    assert res["two_stage"]["candidates"] == 10 and res["images"] == 24 and res["captions"] == 120


def test_training_resumes_from_its_checkpoints(tiny_run: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tiny_run
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(out, copy)
    rc = main(["train", "--data", str(data / "dataset.json"), "--images", str(data / "images"), "--format",
               "karpathy", "--out", str(copy), "--from-scratch", "--clip-steps", "6", "--clip-batch", "32",
               "--steps", "9", "--val-every", "3", "--queries", "8", "--candidates", "6", "--calibrate-candidates",
               "10", "--no-progress", "--resume", "--matcher", '{"top_k": 16, "num_samples": 20}'])
    assert rc == 0
    cfg = json.loads((copy / "config.json").read_text())
    assert [h["step"] for h in cfg["training"]["matcher"]["history"]] == [3, 6, 9]  # only step 9 was new
    # a checkpoint of other training losses (here: without the match BCE's threshold) is refused, saying how
    capsys.readouterr()
    assert main(["train", "--data", str(data / "dataset.json"), "--images", str(data / "images"), "--format",
              "karpathy", "--out", str(copy), "--from-scratch", "--clip-steps", "6", "--clip-batch", "32",
              "--steps", "12", "--val-every", "3", "--queries", "8", "--candidates", "6", "--calibrate-candidates",
              "10", "--no-progress", "--resume", "--patch-bce", "0",
              "--matcher", '{"top_k": 16, "num_samples": 20}']) != 0
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "--patch-bce 0 --candidate-pool 0" in err


def test_indexing_with_a_bundle_uses_its_backbone(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, out = tiny_run
    rc = main(["index", "dataset", str(data / "dataset.json"), "--images", str(data / "images"), "--format",
               "karpathy", "--split", "test", "--model", str(out), "--data-dir", str(tmp_path), "--no-progress"])
    assert rc == 0
    from indexer.stores import open_store

    store = open_store(tmp_path)
    assert store.get_meta()["fingerprint"] == load_bundle(out).backbone.fingerprint
    store.close()


def test_bundle_errors_are_clear(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    _, out = tiny_run
    newer = tmp_path / "newer"
    shutil.copytree(out, newer)
    cfg = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**cfg, "format": 99}))
    with pytest.raises(BundleError, match="upgrade finesearch"):
        load_bundle(newer)
    (newer / "config.json").write_text(json.dumps({**cfg, "format": 1}))  # a matcher of the first design
    with pytest.raises(BundleError, match="--backbone-from"):
        load_bundle(newer)
    assert load_backbone(newer).fingerprint == cfg["backbone"]["fingerprint"]  # its backbone still trains a matcher
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    state = load_file(str(broken / "matcher.safetensors"))
    del state["log_temp"]
    save_file(state, str(broken / "matcher.safetensors"))
    with pytest.raises(BundleError, match="missing \\['log_temp'\\]"):
        load_bundle(broken)
    (broken / "backbone.safetensors").unlink()
    with pytest.raises(BundleError, match="backbone weights backbone.safetensors are missing"):
        load_bundle(broken)
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_unfreezing_the_last_blocks_fine_tunes_only_those(tiny_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, out = tiny_run
    tuned = tmp_path / "tuned"
    rc = main(["train", "--data", str(data / "dataset.json"), "--images", str(data / "images"), "--format",
               "karpathy", "--out", str(tuned), "--backbone-from", str(out), "--unfreeze-blocks", "1",
               "--steps", "3", "--val-every", "3", "--queries", "8", "--candidates", "6", "--calibrate-candidates",
               "10", "--no-progress"])
    assert rc == 0
    before = load_file(str(out / "backbone.safetensors"))
    after = load_file(str(tuned / "backbone.safetensors"))
    last_v, first_v = "visual.transformer.resblocks.2.mlp.c_fc.weight", "visual.transformer.resblocks.0.mlp.c_fc.weight"
    last_t, first_t = "transformer.resblocks.2.attn.in_proj_weight", "transformer.resblocks.1.attn.in_proj_weight"
    assert not torch.equal(before[last_v], after[last_v]) and not torch.equal(before[last_t], after[last_t])
    assert torch.equal(before[first_v], after[first_v]) and torch.equal(before[first_t], after[first_t])
    assert torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])
    cfg = json.loads((tuned / "config.json").read_text())
    b = load_bundle(tuned)
    assert b.backbone.fingerprint == cfg["backbone"]["fingerprint"] != load_bundle(out).backbone.fingerprint
    assert cfg["training"]["config"]["unfreeze_blocks"] == 1
    # provenance: the reused backbone's training stage, passed on when that bundle is reused in turn
    stage = json.loads((out / "config.json").read_text())["training"]["backbone"]
    assert cfg["training"]["backbone_from"] == {"bundle": str(out), "training": stage}
    again = tmp_path / "again"
    assert main(["train", "--data", str(data / "dataset.json"), "--images", str(data / "images"), "--format",
                 "karpathy", "--out", str(again), "--backbone-from", str(tuned), "--steps", "1", "--val-every", "1",
                 "--queries", "4", "--candidates", "4", "--calibrate-candidates", "6", "--no-progress"]) == 0
    chained = json.loads((again / "config.json").read_text())["training"]["backbone_from"]
    assert chained == {"bundle": str(tuned), "training": stage, "via": str(out), "fine_tuned_blocks": 1}


def test_backbone_provenance_keeps_its_origin_along_a_chain() -> None:
    from training.cli import backbone_provenance

    stage = {"steps": 1000}
    a = {"training": {"backbone": stage, "config": {"unfreeze_blocks": 0}}}
    b = {"training": {"backbone_from": backbone_provenance("A", a), "config": {"unfreeze_blocks": 2}}}
    c = {"training": {"backbone_from": backbone_provenance("B", b), "config": {"unfreeze_blocks": 0}}}
    assert backbone_provenance("A", a) == {"bundle": "A", "training": stage}
    assert backbone_provenance("B", b) == {"bundle": "B", "training": stage, "via": "A", "fine_tuned_blocks": 2}
    # a third hop still names the first bundle and the fine-tuning B did
    assert backbone_provenance("C", c) == {"bundle": "C", "training": stage, "via": "A", "fine_tuned_blocks": 2}
    assert backbone_provenance("S", {"training": {}}) == {"bundle": "S", "training": None}  # a stock backbone


def test_heads_over_a_cached_trunk_equal_the_whole_towers(tiny_run: tuple[Path, Path]) -> None:
    """trunk(stop=k) + head(start=k) == full encoder, for a split with more captions than one batch holds."""
    from training.train import trunk_features

    data, out = tiny_run
    b = load_bundle(out)
    items = read_dataset(data / "dataset.json", "karpathy", "val")
    full = extract(b.backbone, items, data / "images")
    trunk = trunk_features(b.backbone, items, data / "images", stop=2, workers=2, progress=False)
    split = trunk.features(chunk=16)  # 24 images, 120 captions: several batches
    torch.testing.assert_close(split.img_glob, full.img_glob, atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(split.txt_glob, full.txt_glob, atol=2e-3, rtol=1e-2)
    assert torch.equal(split.txt_mask, full.txt_mask) and split.txt_tok.shape == full.txt_tok.shape
