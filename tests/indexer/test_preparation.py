"""Index-time preparation: the prepared bank scores like on-the-fly preparation, belongs to one matcher, and
`finesearch index reprepare` moves an index to another matcher without re-encoding."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from indexer.items import ImageItem, TextItem
from indexer.pipeline import Indexer
from indexer.preparation import PreparationMismatch
from indexer.stores import IMAGES, TEXTS, open_store
from service.cli import main
from tests.training.test_matcher import OPTIONS
from training.model.backbone import Backbone
from training.model.bundle import save_bundle
from training.model.matcher import Matcher, MatcherConfig, PreparedImages

CAPTIONS = ["a red circle left of a blue square", "two dogs", "a small green triangle above a big yellow star",
            "red", "a photo of a cat on a mat next to a dog"]


def _matcher(backbone: Backbone, cfg: MatcherConfig, seed: int = 0) -> Matcher:
    """Random non-zero weights in every module, so no preparation step is the identity."""
    grid = backbone.model.visual.grid_size
    cfg = replace(cfg, dim=backbone.embed_dim, num_patches=grid[0] * grid[1], max_words=backbone.context_length - 2)
    torch.manual_seed(seed)
    m = Matcher(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _images(coco: Path, n: int = 5) -> list[ImageItem]:
    return [ImageItem(path=p, id=p.stem) for p in sorted((coco / "images").glob("*.jpg"))[:n]]


def _texts() -> list[TextItem]:
    return [TextItem(t, id=f"t{k}") for k, t in enumerate(CAPTIONS)]


def _rows(ix: Indexer, coll: str) -> tuple[np.ndarray, np.ndarray]:
    found = ix.store.retrieve(coll, [f"t{k}" for k in range(len(CAPTIONS))] if coll == TEXTS else
                              [p for p in _ids(ix)], with_vectors=True)
    items = sorted(found.items())
    return np.array([p["row"] for _, (p, _) in items]), np.stack([v for _, (_, v) in items])


def _ids(ix: Indexer) -> list[str]:
    return sorted(p["item_id"] for p in ix.store.scroll(IMAGES))


@torch.inference_mode()
def _patch_scores(ix: Indexer, m: Matcher, prepared: bool) -> torch.Tensor:
    """All image × caption patch scores, from the prepared banks or preparing the raw tokens here."""
    img_rows, img_globals = _rows(ix, IMAGES)
    txt_rows, _ = _rows(ix, TEXTS)
    if prepared:
        f = ix.prepared[IMAGES].fetch(img_rows)
        img = PreparedImages(f.tokens.float(), torch.from_numpy(img_globals))
        t = ix.prepared[TEXTS].fetch(txt_rows)
        txt = m.texts_from_words(t.tokens.float(), t.mask, None, t.extras)
    else:
        tok, _ = ix.banks[IMAGES].gather(img_rows)
        img = m.prepare_images(tok.float(), torch.from_numpy(img_globals))
        tok, mask = ix.banks[TEXTS].gather(txt_rows)
        txt = m.prepare_texts(tok.float(), mask, torch.zeros(len(txt_rows), m.config.dim))
    return m.score_matrices(img, txt)[1]


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_prepared_at_index_scores_equal_on_the_fly(option: str, tmp_path: Path, coco_mini: Path,
                                                     tiny_backbone: Backbone) -> None:
    m = _matcher(tiny_backbone, OPTIONS[option])
    ix = Indexer(tiny_backbone, open_store(tmp_path), tmp_path, batch_size=3, matcher=m)
    try:
        ix.index_images(_images(coco_mini))
        ix.index_texts(_texts(), batch_size=2)
        live = _patch_scores(ix, m, prepared=False)
        stored = _patch_scores(ix, m, prepared=True)
        assert live.shape == (5, 5)
        assert live.std() > 1e-3  # the scores differ between pairs: the comparison below means something
        torch.testing.assert_close(stored, live, atol=1e-3, rtol=0)  # fp16 storage of the prepared features
        if m.config.top_k:
            assert ix.prepared[IMAGES].lengths(_rows(ix, IMAGES)[0]).tolist() == [m.config.top_k] * 5
    finally:
        ix.close()


def test_prepared_bank_follows_writes_deletes_and_compaction(tmp_path: Path, tiny_backbone: Backbone) -> None:
    m = _matcher(tiny_backbone, OPTIONS["word_context"])
    ix = Indexer(tiny_backbone, open_store(tmp_path), tmp_path, matcher=m)
    try:
        ix.index_texts(_texts())
        ix.index_texts([TextItem("a blue square", id="t1")], skip_existing=False)  # replace: old rows tombstoned
        assert ix.delete(TEXTS, ["t0"]) == 1
        rows = [p["row"] for p in ix.store.scroll(TEXTS)]
        for bank in (ix.banks[TEXTS], ix.prepared[TEXTS]):
            assert sorted(bank.live_rows().tolist()) == sorted(rows)
        result = ix.compact()
        assert result[TEXTS]["rows_after"] == result[TEXTS + ".prepared"]["rows_after"] == 4
        f = ix.prepared[TEXTS].fetch(rows)
        assert f.extras is not None and f.extras.shape == (4, m.text_extras)
        torch.testing.assert_close(f.extras.sum(1), torch.ones(4))  # LDA weights: a softmax per caption
    finally:
        ix.close()


def _bundle(tmp_path: Path, backbone: Backbone, m: Matcher, name: str) -> Path:
    return save_bundle(tmp_path / name, backbone, m, include_backbone=True, name=name)


def test_a_bank_prepared_by_one_matcher_is_refused_by_another_and_reprepare_fixes_it(
        tmp_path: Path, coco_mini: Path, tiny_backbone: Backbone, capsys: pytest.CaptureFixture[str]) -> None:
    a = _matcher(tiny_backbone, OPTIONS["all_patches"], seed=1)
    b = _matcher(tiny_backbone, OPTIONS["selector"], seed=2)  # another matcher on the same backbone
    bundle_b = _bundle(tmp_path, tiny_backbone, b, "b")
    data = tmp_path / "data"
    ix = Indexer(tiny_backbone, open_store(data), data, matcher=a)
    ix.index_images(_images(coco_mini))
    ix.index_texts(_texts())
    ix.close()
    with pytest.raises(PreparationMismatch, match="prepared by another matcher.*finesearch index reprepare"):
        Indexer(tiny_backbone, open_store(data), data, matcher=b)
    # the server refuses to start on it, with the same command in its one-line error
    with mock.patch.dict(os.environ):  # `serve` exports its flags as FINESEARCH_* for worker processes
        assert main(["serve", "--model", str(bundle_b), "--data-dir", str(data), "--port", "0"]) == 2
    assert "finesearch index reprepare --model" in capsys.readouterr().err

    assert main(["index", "reprepare", "--model", str(bundle_b), "--data-dir", str(data)]) == 0
    report = capsys.readouterr().out
    assert '"items": 5' in report and "items_per_s" in report
    ix = Indexer(tiny_backbone, open_store(data), data, matcher=b)
    try:
        torch.testing.assert_close(_patch_scores(ix, b, prepared=True), _patch_scores(ix, b, prepared=False),
                                   atol=5e-3, rtol=0)
        assert ix.prepared[IMAGES].lengths(_rows(ix, IMAGES)[0]).tolist() == [b.config.top_k] * 5
    finally:
        ix.close()
    assert not list((data / "tokens").glob("*.prepared.*"))  # no half-built or old bank left behind


def test_an_index_without_prepared_features_is_refused_until_reprepared(
        tmp_path: Path, tiny_backbone: Backbone, capsys: pytest.CaptureFixture[str]) -> None:
    m = _matcher(tiny_backbone, OPTIONS["words_only_adapter"])
    bundle = _bundle(tmp_path, tiny_backbone, m, "m")
    data = tmp_path / "data"
    ix = Indexer(tiny_backbone, open_store(data), data)  # a bare backbone: raw tokens only (or an older finesearch)
    ix.index_texts(_texts())
    ix.close()
    with pytest.raises(PreparationMismatch, match="5 of the 5 items .* have no features prepared"):
        Indexer(tiny_backbone, open_store(data), data, matcher=m)
    assert main(["index", "reprepare", "--model", str(bundle), "--data-dir", str(data)]) == 0
    Indexer(tiny_backbone, open_store(data), data, matcher=m).close()


def test_without_raw_tokens_the_index_serves_but_cannot_be_reprepared(
        tmp_path: Path, tiny_backbone: Backbone, capsys: pytest.CaptureFixture[str]) -> None:
    m = _matcher(tiny_backbone, OPTIONS["word_context"])
    bundle = _bundle(tmp_path, tiny_backbone, m, "m")
    data = tmp_path / "data"
    ix = Indexer(tiny_backbone, open_store(data), data, matcher=m, keep_raw_tokens=False)
    ix.index_texts(_texts())
    assert len(ix.banks[TEXTS]) == 0 and len(ix.prepared[TEXTS]) == 5
    assert ix.delete(TEXTS, ["t3"]) == 1 and len(ix.prepared[TEXTS]) == 4
    ix.close()
    assert main(["index", "reprepare", "--model", str(bundle), "--data-dir", str(data)]) == 2
    assert "have no raw tokens" in capsys.readouterr().err
    with pytest.raises(ValueError, match="keep them"):
        Indexer(tiny_backbone, open_store(tmp_path / "other"), tmp_path / "other", keep_raw_tokens=False)


def test_reprepare_after_a_crash_leaves_an_index_the_server_accepts(
        tmp_path: Path, tiny_backbone: Backbone, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Orphan rows (features written, the Qdrant upsert never made) must not make the re-prepared bank look
    incomplete: reprepare covers every raw row, served or not."""
    a, b = _matcher(tiny_backbone, OPTIONS["word_context"], seed=1), _matcher(tiny_backbone, OPTIONS["selector"], 2)
    data = tmp_path / "data"
    store = open_store(data)
    ix = Indexer(tiny_backbone, store, data, matcher=a)
    ix.index_texts(_texts()[:3])

    def dies(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt("killed between the feature write and the upsert")

    monkeypatch.setattr(store, "upsert", dies)
    with pytest.raises(KeyboardInterrupt):
        ix.index_texts(_texts()[3:])
    assert len(ix.banks[TEXTS]) == 5 and store.count(TEXTS) == 3  # two orphans
    monkeypatch.undo()
    ix.close()
    assert main(["index", "reprepare", "--model", str(_bundle(tmp_path, tiny_backbone, b, "b")),
                 "--data-dir", str(data)]) == 0
    ix = Indexer(tiny_backbone, open_store(data), data, matcher=b)  # accepted: no "items have no features"
    assert len(ix.prepared[TEXTS]) == 5
    ix.close()


def test_an_indexer_without_the_model_is_refused_where_features_are_prepared(
        tmp_path: Path, tiny_backbone: Backbone) -> None:
    """Items written without their prepared features would be recalled but never reranked: refused up front."""
    m = _matcher(tiny_backbone, OPTIONS["word_context"])
    data = tmp_path / "data"
    Indexer(tiny_backbone, open_store(data), data, matcher=m).close()
    store = open_store(data)
    with pytest.raises(PreparationMismatch, match="index with the model it serves"):
        Indexer(tiny_backbone, store, data)
    store.close()


def test_an_interrupted_swap_is_undone_at_open(tmp_path: Path, tiny_backbone: Backbone) -> None:
    """reprepare died between renaming the old bank away and moving the new one in: the old one comes back."""
    m = _matcher(tiny_backbone, OPTIONS["word_context"])
    data = tmp_path / "data"
    ix = Indexer(tiny_backbone, open_store(data), data, matcher=m)
    ix.index_texts(_texts())
    ix.close()
    root = data / "tokens" / "texts.prepared"
    root.rename(root.with_name("texts.prepared.old"))
    ix = Indexer(tiny_backbone, open_store(data), data, matcher=m)
    assert len(ix.prepared[TEXTS]) == 5 and root.is_dir()
    ix.close()


def test_an_item_the_store_refuses_fails_alone_and_the_rest_keep_their_prepared_features(
        tmp_path: Path, tiny_backbone: Backbone) -> None:
    """A refused batch is retried item by item: each retried item carries its own prepared row (LDA extras
    included), so the prepared bank of the kept captions equals a clean index's."""
    m = _matcher(tiny_backbone, OPTIONS["word_context"])
    clean = Indexer(tiny_backbone, open_store(tmp_path / "clean"), tmp_path / "clean", matcher=m)
    ix = Indexer(tiny_backbone, open_store(tmp_path / "refusing"), tmp_path / "refusing", matcher=m)
    try:
        clean.index_texts(_texts())
        upsert = ix.store.upsert

        def refuse_t3(collection: str, ids: list[str], *args: object, **kwargs: object) -> None:
            if "t3" in ids:
                raise RuntimeError("no room for t3")
            upsert(collection, ids, *args, **kwargs)  # type: ignore[arg-type]

        with mock.patch.object(ix.store, "upsert", side_effect=refuse_t3):
            summary = ix.index_texts(_texts())
        assert summary.indexed == 4 and summary.failed == 1
        assert summary.errors[3].code == "store_refused" and "no room for t3" in summary.errors[3].reason
        kept = sorted(p["item_id"] for p in ix.store.scroll(TEXTS))
        assert kept == ["t0", "t1", "t2", "t4"]
        assert len(ix.prepared[TEXTS].live_rows()) == 4  # the refused item's rows were rolled back
        for name in kept:
            a, b = (index.prepared[TEXTS].fetch([index.store.retrieve(TEXTS, [name])[name][0]["row"]])
                    for index in (ix, clean))
            torch.testing.assert_close(a.tokens, b.tokens)
            assert a.extras is not None and b.extras is not None
            torch.testing.assert_close(a.extras, b.extras)
    finally:
        ix.close()
        clean.close()
