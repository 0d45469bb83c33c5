"""End-to-end indexing of real JPEGs through the CLI and the pipeline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.items import ImageItem, TextItem
from indexer.pipeline import Indexer
from indexer.stores import IMAGES, TEXTS, IndexMismatch, open_store
from service.cli import main
from training.model.backbone import Backbone
from training.model.defaults import TINY_MODEL

TINY = ["--backbone", TINY_MODEL, "--from-scratch", "--seed", "0", "--no-progress"]


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def test_index_coco_mini_dataset_then_resume_indexes_nothing(tmp_path: Path, coco_mini: Path) -> None:
    data = tmp_path / "data"
    args = ["index", "dataset", str(coco_mini / "captions.json"), "--images", str(coco_mini / "images"),
            "--format", "coco", "--data-dir", str(data), *TINY]
    assert main([*args, "--report", str(tmp_path / "r1.json")]) == 0
    first = _report(tmp_path / "r1.json")
    assert first["images"]["indexed"] == 79 and first["images"]["failed"] == 0
    assert first["texts"]["indexed"] == 395
    assert main([*args, "--report", str(tmp_path / "r2.json")]) == 0
    second = _report(tmp_path / "r2.json")
    assert second["images"] == {**second["images"], "indexed": 0, "skipped": 79, "failed": 0}
    assert second["texts"]["indexed"] == 0 and second["texts"]["skipped"] == 395

    store = open_store(data)
    assert store.count(IMAGES) == 79 and store.count(TEXTS) == 395
    payload, _ = store.retrieve(IMAGES, ["397133"])["397133"]
    assert payload["uri"].endswith("000000397133.jpg") and payload["width"] == 640
    caption = store.retrieve(TEXTS, ["397133#0"])["397133#0"][0]
    assert caption["image_id"] == "397133" and caption["text"] == "A man is in a kitchen making pizzas."
    assert store.count(TEXTS, {"image_id": "397133"}) == 5
    store.close()


def test_corrupt_files_fail_and_other_file_types_are_skipped_with_a_reason(tmp_path: Path, coco_mini: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((coco_mini / "images").glob("*.jpg"))[:6]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.jpg").write_bytes((folder / p.name).read_bytes()[:300])  # truncated JPEG
    (folder / "notes.png").write_text("this is not a png")
    (folder / "notes.docx").write_bytes(b"PK\x03\x04 not an image")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden files are nobody's photos: not even counted
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"file": p.name, "id": "last", "metadata": {"album": "trip"}}) + "\n")
    report = tmp_path / "r.json"
    rc = main(["index", "images", str(folder), "--metadata", str(meta),
               "--data-dir", str(tmp_path / "data"), "--report", str(report), *TINY])
    assert rc == 0
    r = _report(report)["images"]
    assert r["indexed"] == 6 and r["failed"] == 2 and r["skipped"] == 1
    reasons = {Path(f["source"]).name: f["reason"] for f in r["failures"]}
    assert "corrupt or truncated" in reasons["broken.jpg"]
    assert "not a recognised image" in reasons["notes.png"]
    assert [(Path(f["source"]).name, f["code"]) for f in r["skips"]] == [("notes.docx", "unsupported_type")]
    assert "(.docx)" in r["skips"][0]["reason"]
    store = open_store(tmp_path / "data")
    assert store.count(IMAGES) == 6
    assert store.retrieve(IMAGES, ["last"])["last"][0]["metadata"] == {"album": "trip"}
    assert store.count(IMAGES, {"album": "trip"}) == 1
    store.close()
    strict = main(["index", "images", str(folder), "--data-dir", str(tmp_path / "data"), "--strict", *TINY])
    assert strict == 1  # the two bad files fail again; the good ones are skipped


def test_a_path_that_does_not_exist_is_an_error_and_nothing_is_indexed(
    tmp_path: Path, coco_mini: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["index", "images", str(coco_mini / "images"), str(tmp_path / "gone.jpg"),
               "--data-dir", str(tmp_path / "data"), *TINY])
    assert rc == 1
    assert f"no such file or directory: {tmp_path / 'gone.jpg'}" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # refused before anything was opened


def test_heic_and_avif_photos_are_indexed(tmp_path: Path, coco_mini: Path) -> None:
    import pillow_heif
    from PIL import Image

    folder = tmp_path / "phone"
    folder.mkdir()
    src = sorted((coco_mini / "images").glob("*.jpg"))[:2]
    sizes = []
    for p in src:
        with Image.open(p) as im:
            sizes.append(im.size)
    with Image.open(src[0]) as im:
        pillow_heif.from_pillow(im.convert("RGB")).save(folder / "a.heic", quality=80)
    with Image.open(src[1]) as im:
        im.convert("RGB").save(folder / "b.avif", quality=60)
    report = tmp_path / "r.json"
    assert main(["index", "images", str(folder), "--id-from", "stem", "--data-dir", str(tmp_path / "data"),
                 "--report", str(report), *TINY]) == 0
    r = _report(report)["images"]
    assert (r["indexed"], r["failed"], r["skipped"]) == (2, 0, 0), r
    store = open_store(tmp_path / "data")
    got = store.retrieve(IMAGES, ["a", "b"])
    assert [(got[k][0]["width"], got[k][0]["height"]) for k in "ab"] == sizes
    store.close()


def test_content_hash_ids_deduplicate_copies(tmp_path: Path, coco_mini: Path, tiny_backbone: Backbone) -> None:
    src = sorted((coco_mini / "images").glob("*.jpg"))[0]
    ix = Indexer(tiny_backbone, open_store(tmp_path), tmp_path, batch_size=4)
    s = ix.index_images([ImageItem(path=src), ImageItem(data=src.read_bytes(), uri="upload://x")])
    assert (s.indexed, s.skipped) == (1, 1)
    assert s.ids[0] is not None and len(s.ids[0]) == 32
    ix.close()


class _Crash(BaseException):
    """Stands for the process dying mid-write (kill -9): nothing after it runs."""


def test_crash_between_feature_write_and_upsert_leaves_a_consistent_store(
    tmp_path: Path, coco_mini: Path, tiny_backbone: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = sorted((coco_mini / "images").glob("*.jpg"))[:12]
    store = open_store(tmp_path)
    ix = Indexer(tiny_backbone, store, tmp_path, batch_size=4)
    real_upsert = store.upsert
    calls = {"n": 0}

    def crashing_upsert(*a, **kw):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # a BaseException, like the process dying: no rollback can run
            raise _Crash("simulated crash after the token bank write")
        return real_upsert(*a, **kw)

    monkeypatch.setattr(store, "upsert", crashing_upsert)
    with pytest.raises(_Crash, match="simulated crash"):
        ix.index_images([ImageItem(path=p, id=p.stem) for p in paths])
    bank = ix.banks[IMAGES]
    assert store.count(IMAGES) == 4 and len(bank) == 8  # 4 orphan rows, no point without features
    for payload in store.scroll(IMAGES):
        bank.gather([payload["row"]])

    monkeypatch.setattr(store, "upsert", real_upsert)
    s = ix.index_images([ImageItem(path=p, id=p.stem) for p in paths])  # resume
    assert (s.indexed, s.skipped) == (8, 4)
    assert store.count(IMAGES) == 12 and len(bank) == 16
    result = ix.compact()
    assert result[IMAGES]["rows_after"] == 12
    rows = [p["row"] for p in store.scroll(IMAGES)]
    tokens, mask = bank.gather(rows)
    assert tokens.shape[0] == 12 and bool(mask.all())
    ix.close()


def test_a_refused_write_leaves_no_orphan_row_and_fails_only_its_item(
    tmp_path: Path, tiny_backbone: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(tmp_path)
    ix = Indexer(tiny_backbone, store, tmp_path)
    real_upsert = store.upsert

    def picky_upsert(collection, ids, vectors, payloads):  # type: ignore[no-untyped-def]
        if "bad" in ids:
            raise ValueError("payload refused")
        return real_upsert(collection, ids, vectors, payloads)

    monkeypatch.setattr(store, "upsert", picky_upsert)
    s = ix.index_texts([TextItem("one", id="a"), TextItem("two", id="bad"), TextItem("three", id="c")])
    assert (s.indexed, s.failed) == (2, 1) and s.ids == ["a", None, "c"]
    assert s.errors[1].code == "store_refused" and "payload refused" in s.errors[1].reason
    assert store.count(TEXTS) == 2 and len(ix.banks[TEXTS]) == 2  # the refused rows were tombstoned
    ix.close()


def test_bad_ids_and_metadata_fail_alone_before_anything_is_written(tmp_path: Path, tiny_backbone: Backbone) -> None:
    ix = Indexer(tiny_backbone, open_store(tmp_path), tmp_path)
    deep: dict = {}
    for _ in range(20):
        deep = {"x": deep}
    s = ix.index_texts([TextItem("ok", id="fine"), TextItem("slash", id="a/b"), TextItem("dots", id=".."),
                        TextItem("deep", metadata=deep), TextItem("nan", metadata={"v": float("nan")}),
                        TextItem("big", metadata={"v": 2**70}), TextItem("sur", metadata={"v": "\ud800"}),
                        TextItem("ref", image_id="x/y")])
    assert s.indexed == 1 and s.failed == 7
    codes = [s.errors[k].code for k in range(1, 8)]
    assert codes == ["invalid_id", "invalid_id", "too_deep", "invalid_number", "invalid_number", "invalid_unicode",
                     "invalid_id"]
    assert ix.store.count(TEXTS) == 1 and len(ix.banks[TEXTS]) == 1
    ix.close()


def test_reindex_replaces_and_delete_removes_features(tmp_path: Path, tiny_backbone: Backbone) -> None:
    ix = Indexer(tiny_backbone, open_store(tmp_path), tmp_path)
    ix.index_texts([TextItem("a red circle", id="t1"), TextItem("a blue square", id="t2")])
    old_row = ix.store.retrieve(TEXTS, ["t1"])["t1"][0]["row"]
    s = ix.index_texts([TextItem("a green triangle", id="t1")], skip_existing=False)
    assert s.indexed == 1 and ix.store.count(TEXTS) == 2
    new = ix.store.retrieve(TEXTS, ["t1"])["t1"][0]
    assert new["text"] == "a green triangle" and new["row"] != old_row
    assert old_row not in ix.banks[TEXTS] and len(ix.banks[TEXTS]) == 2
    assert ix.delete(TEXTS, ["t1", "unknown"]) == 1
    assert ix.store.count(TEXTS) == 1 and new["row"] not in ix.banks[TEXTS]


def test_text_validation(tmp_path: Path, tiny_backbone: Backbone) -> None:
    ix = Indexer(tiny_backbone, open_store(tmp_path), tmp_path)
    s = ix.index_texts([TextItem("   "), TextItem("x" * 5000), TextItem("ok text")])
    assert (s.indexed, s.failed) == (1, 2)
    assert [f.reason.split(",")[0] for f in s.failures] == ["text is empty",
                                                            "text is 5000 characters long"]


def test_search_finds_an_indexed_image_by_its_own_vector(tmp_path: Path, coco_mini: Path,
                                                         tiny_backbone: Backbone) -> None:
    paths = sorted((coco_mini / "images").glob("*.jpg"))[:10]
    ix = Indexer(tiny_backbone, open_store(tmp_path), tmp_path)
    ix.index_images([ImageItem(path=p, id=p.stem) for p in paths])
    from training.model.images import load_for_model

    q = tiny_backbone.encode_images(np.stack([load_for_model(paths[3], 64)])).globals[0].numpy()
    assert ix.store.search(IMAGES, q, 1)[0].id == paths[3].stem


def test_another_backbone_is_refused_on_an_existing_index(tmp_path: Path, tiny_backbone: Backbone) -> None:
    Indexer(tiny_backbone, open_store(tmp_path), tmp_path).index_texts([TextItem("hello")])
    other = Backbone.load(TINY_MODEL, from_scratch=True, seed=7, device="cpu")
    with pytest.raises(IndexMismatch, match="re-index"):
        Indexer(other, open_store(tmp_path), tmp_path)


def test_cli_reports_configuration_errors_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["index", "images", str(tmp_path), "--data-dir", str(tmp_path / "d"), "--backbone", "ViT-B-32"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("finesearch: error: no weights given for ViT-B-32") and "Traceback" not in err


def test_one_item_per_photo_across_index_images_and_index_dataset(tmp_path: Path, coco_mini: Path) -> None:
    """The same photos indexed by folder (content-hash ids) and as a dataset (its own ids), in either order,
    are stored once; the dataset's captions link to the item the photo already is."""
    for order in (("images", "dataset"), ("dataset", "images")):
        data = tmp_path / "-".join(order)
        cmds = {"images": ["index", "images", str(coco_mini / "images"), "--data-dir", str(data), *TINY],
                "dataset": ["index", "dataset", str(coco_mini / "captions.json"), "--images", str(coco_mini / "images"),
                            "--format", "coco", "--data-dir", str(data), "--report", str(data / "r.json"), *TINY]}
        for step in order:
            assert main(cmds[step]) == 0
        store = open_store(data)
        assert store.count(IMAGES) == 79, order
        assert store.count(TEXTS) == 395
        images = {p["item_id"]: p for p in store.scroll(IMAGES)}
        linked = {p["image_id"] for p in store.scroll(TEXTS)}
        assert linked == set(images)  # every caption points at a stored image
        if order[0] == "images":  # the photos kept their content-hash ids
            assert all(len(i) == 32 for i in images)
            assert _report(data / "r.json")["images"]["skipped"] == 79
        store.close()


def test_prune_removes_images_whose_files_are_gone(tmp_path: Path, coco_mini: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder, other = tmp_path / "photos", tmp_path / "other"
    folder.mkdir(), other.mkdir()
    src = sorted((coco_mini / "images").glob("*.jpg"))
    for p in src[:4]:
        shutil.copy(p, folder / p.name)
    shutil.copy(src[4], other / src[4].name)
    data = ["--data-dir", str(tmp_path / "data"), "--id-from", "stem", *TINY]
    assert main(["index", "images", str(folder), str(other), *data]) == 0
    (folder / src[0].name).unlink()
    (other / src[4].name).unlink()  # gone too, but not under the folder being pruned: kept
    assert main(["index", "images", str(folder), "--prune", *data]) == 0
    assert f"pruned 1 images whose files are gone: {src[0].stem}" in capsys.readouterr().out
    store = open_store(tmp_path / "data")
    assert {p["item_id"] for p in store.scroll(IMAGES)} == {p.stem for p in src[1:5]}
    store.close()
