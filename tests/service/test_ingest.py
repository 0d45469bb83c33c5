"""The one way in for images (service/ingest.py), which uploads and bulk jobs share."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from indexer.blobs import BlobStore
from service.config import Settings
from service.ingest import Arrival, admit, admit_all
from training.model.images import ImageRejected

from .helpers import png


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buf, "PNG")
    return buf.getvalue()


def _code(arrival: Arrival, settings: Settings, blobs: BlobStore) -> str:
    with pytest.raises(ImageRejected) as exc:
        admit(arrival, settings, blobs)
    return exc.value.code


def test_checks_run_bytes_then_content_type_then_pixels(tmp_path: Path) -> None:
    settings, blobs = Settings(max_image_bytes=5000, max_image_pixels=1_000_000), BlobStore(tmp_path / "blobs")
    big = png((200, 200), noise=True)
    assert len(big) > 5000
    assert _code(Arrival("big.txt", big, content_type="text/plain"), settings, blobs) == "image_too_large"
    # the size as received wins over the bytes held (a streamed upload keeps only its first ones)
    assert _code(Arrival("cut.png", png(), size=10_000), settings, blobs) == "image_too_large"
    assert _code(Arrival("a.txt", png(), content_type="text/plain"), settings, blobs) == "unsupported_media_type"
    bomb = _bomb()
    assert len(bomb) < 5000
    assert "pixels, above the limit" in str(pytest.raises(ImageRejected, admit, Arrival("b.png", bomb), settings,
                                                          blobs).value)
    assert not any((tmp_path / "blobs").rglob("*")), "nothing refused reaches the blob store"


def test_an_admitted_image_is_stored_once_and_described(tmp_path: Path) -> None:
    settings, blobs = Settings(), BlobStore(tmp_path / "blobs")
    data = png()
    item = admit(Arrival("dir/a.png", data, content_type="image/png", id="a", metadata={"k": 1},
                         extra={"job": "j1"}), settings, blobs)
    assert (item.id, item.metadata, item.data) == ("a", {"k": 1}, data)
    assert item.extra["content_type"] == "image/png" and item.extra["filename"] == "dir/a.png"
    assert item.extra["job"] == "j1" and blobs.path(item.extra["blob"]).read_bytes() == data
    assert admit(Arrival("x", data, id=""), settings, blobs).id is None  # an empty id asks for one


def test_a_file_over_the_limit_is_never_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, blobs = Settings(max_image_bytes=5000), BlobStore(tmp_path / "blobs")
    (tmp_path / "big.png").write_bytes(png((200, 200), noise=True))
    (tmp_path / "ok.png").write_bytes(png())
    read: list[str] = []
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or original(self))
    out = admit_all([Arrival("big.png", tmp_path / "big.png"), Arrival("ok.png", tmp_path / "ok.png")], settings,
                    blobs)
    assert read == ["ok.png"]
    assert out.positions == [1] and list(out.refused) == [0] and out.refused[0].code == "image_too_large"
    assert [i.extra["filename"] for i in out.items] == ["ok.png"]
