"""Training's feature cache: one safetensors file per (backbone, item list), read back exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training import features
from training.datasets import read_dataset
from training.features import Features, cached_extract, extract
from training.model.backbone import Backbone
from training.synth import generate


def _same(a: Features, b: Features) -> None:
    assert (a.image_ids, a.texts) == (b.image_ids, b.texts)
    for name in ("img_glob", "img_tok", "txt_img", "txt_glob", "txt_tok", "txt_mask"):
        got, want = getattr(a, name), getattr(b, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


def test_the_cache_returns_what_extraction_computed(tiny_backbone: Backbone, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    generate(tmp_path / "synth", seed=4, train=6, val=0, test=0)
    items = read_dataset(tmp_path / "synth" / "dataset.json", "karpathy", "train")
    images, cache = tmp_path / "synth" / "images", tmp_path / "cache"
    fresh = extract(tiny_backbone, items, images)
    _same(cached_extract(tiny_backbone, items, images, cache), fresh)  # computes and writes
    (folder,) = cache.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["features.safetensors", "index.json"]

    def no_extract(*a: object, **k: object) -> Features:
        raise AssertionError("a complete cache must be read, not recomputed")

    monkeypatch.setattr(features, "extract", no_extract)
    _same(cached_extract(tiny_backbone, items, images, cache), fresh)  # read back
    # a run killed while writing leaves only its temporary file: that is no cache
    (folder / "features.safetensors").rename(folder / ".features.1.tmp")
    with pytest.raises(AssertionError, match="must be read"):
        cached_extract(tiny_backbone, items, images, cache)
    # another item list is another key
    assert features.cache_key(tiny_backbone, items[:3]) != features.cache_key(tiny_backbone, items)
