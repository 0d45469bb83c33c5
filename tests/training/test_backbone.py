from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training.model.backbone import Backbone, BackboneError
from training.model.defaults import TINY_MODEL


def test_image_features_shapes_and_norms(tiny_backbone: Backbone) -> None:
    imgs = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    f = tiny_backbone.encode_images(imgs)
    grid = (64 // 8) ** 2
    assert f.globals.shape == (3, tiny_backbone.embed_dim)
    assert f.tokens.shape == (3, grid, tiny_backbone.embed_dim)
    torch.testing.assert_close(f.globals.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(f.tokens.norm(dim=-1), torch.ones(3, grid))


def test_patch_tokens_are_projected_visual_tokens(tiny_backbone: Backbone) -> None:
    """Tokens = ln_post(patch outputs) @ visual.proj, in the same space as the global."""
    imgs = np.random.default_rng(1).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    visual = tiny_backbone.model.visual
    with torch.no_grad():
        x = tiny_backbone.pixels(imgs)
        x = visual._embeds(x)
        x = visual.transformer(x)
        x = visual.ln_post(x)
        ref_tokens = torch.nn.functional.normalize(x[:, 1:] @ visual.proj, dim=-1)
        ref_global = torch.nn.functional.normalize(x[:, 0] @ visual.proj, dim=-1)  # 'tok' pooling
    f = tiny_backbone.encode_images(imgs)
    torch.testing.assert_close(f.tokens, ref_tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(f.globals, ref_global, atol=1e-5, rtol=1e-4)


def test_text_global_matches_open_clip_encode_text(tiny_backbone: Backbone) -> None:
    texts = ["a red circle left of a blue square", "dog"]
    ids = tiny_backbone.tokenize(texts)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(tiny_backbone.model.encode_text(ids), dim=-1)
    torch.testing.assert_close(tiny_backbone.encode_texts(texts).globals, ref, atol=1e-5, rtol=1e-4)


def test_word_mask_covers_exactly_the_words(tiny_backbone: Backbone) -> None:
    texts = ["a red circle left of a blue square", "dog", ""]
    f = tiny_backbone.encode_texts(texts)
    ids = tiny_backbone.tokenize(texts)
    n_bpe = (ids != 0).sum(dim=1) - 2  # minus SOT and EOT
    assert f.mask.sum(dim=1).tolist() == n_bpe.tolist() == [8, 1, 0]
    assert f.tokens.shape[1] == 8
    assert torch.all(f.tokens[~f.mask] == 0)
    torch.testing.assert_close(f.tokens[f.mask].norm(dim=-1), torch.ones(int(f.mask.sum())))


def test_padding_in_a_batch_changes_nothing(tiny_backbone: Backbone) -> None:
    alone = tiny_backbone.encode_texts(["small green triangle"])
    batch = tiny_backbone.encode_texts(["small green triangle", "a much longer caption with many more words in it"])
    n = int(alone.mask.sum())
    torch.testing.assert_close(batch.globals[0], alone.globals[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch.tokens[0, :n], alone.tokens[0, :n], atol=1e-5, rtol=1e-4)


def test_overlong_text_is_truncated_to_the_context(tiny_backbone: Backbone) -> None:
    f = tiny_backbone.encode_texts(["word " * 200])
    assert int(f.mask.sum()) == tiny_backbone.context_length - 2


def test_no_weights_is_an_error_not_a_random_init() -> None:
    with pytest.raises(BackboneError, match="--from-scratch"):
        Backbone.load("ViT-B-32")


def test_missing_checkpoint_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "weights.safetensors"
    with pytest.raises(BackboneError, match=str(missing)):
        Backbone.load("ViT-B-32", str(missing))


def test_unknown_tag_lists_the_known_ones() -> None:
    with pytest.raises(BackboneError, match="laion2b_s34b_b79k"):
        Backbone.load("ViT-B-32", "no-such-tag")


def test_uncached_pretrained_tag_fails_fast_offline(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(BackboneError, match="not available locally"):
        Backbone.load("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 30


def test_unknown_architecture() -> None:
    with pytest.raises(BackboneError, match="unknown open_clip architecture"):
        Backbone.load("ViT-Z-99", from_scratch=True)


def test_local_checkpoint_round_trip(tmp_path: Path, tiny_backbone: Backbone) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    loaded = Backbone.load(TINY_MODEL, str(path), device="cpu")
    assert loaded.fingerprint == tiny_backbone.fingerprint
    assert loaded.source.pretrained == str(path)
    texts = ["a photo"]
    torch.testing.assert_close(loaded.encode_texts(texts).globals, tiny_backbone.encode_texts(texts).globals)


def test_fingerprint_tells_weights_apart(tiny_backbone: Backbone) -> None:
    other = Backbone.load(TINY_MODEL, from_scratch=True, seed=1, device="cpu")
    same = Backbone.load(TINY_MODEL, from_scratch=True, seed=0, device="cpu")
    assert other.fingerprint != tiny_backbone.fingerprint
    assert same.fingerprint == tiny_backbone.fingerprint


def test_device_and_precision_selection() -> None:
    from training.model.backbone import pick_device, pick_dtype

    assert pick_device("cpu").type == "cpu"
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16
    if not torch.cuda.is_available():
        with pytest.raises(BackboneError, match="CUDA is not available"):
            pick_device("cuda")


def test_a_deliberate_random_init_is_quiet_and_leaves_logging_as_it_was(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    before = list(logging.getLogger().filters)
    with caplog.at_level(logging.WARNING):
        Backbone.load(TINY_MODEL, None, from_scratch=True, device="cpu")
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]
    assert logging.getLogger().filters == before  # importing or loading installs no filter for good
    with caplog.at_level(logging.WARNING):  # anyone else's warning still shows
        logging.warning("No pretrained weights loaded for model 'x'.")
    assert any("No pretrained weights" in r.getMessage() for r in caplog.records)
