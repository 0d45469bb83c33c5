from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
from PIL import Image

from training.datasets import CaptionedImage


def _png(colour: tuple[int, int, int], size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def test_upload_search_delete_cycle(client: httpx.Client, synth: tuple[Path, list[CaptionedImage]]) -> None:
    root, items = synth
    before = client.get("/v1/stats").json()["counts"]
    src = items[7]
    data = (root / "images" / src.filename).read_bytes()
    files = [("files", ("mine.png", data, "image/png")),
             ("files", ("broken.jpg", b"\xff\xd8 not a jpeg", "image/jpeg")),
             ("files", ("notes.txt", b"hello", "text/plain"))]
    r = client.post("/v1/images", files=files, data={"ids": json.dumps(["upload-1", "upload-2", "upload-3"]),
                                                     "metadata": json.dumps({"mine.png": {"album": "tests"}})})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["indexed"], body["failed"]) == (1, 2)
    ok, broken, notes = body["items"]
    assert ok == {"filename": "mine.png", "id": "upload-1", "error": None, "duplicate_of": None}
    assert broken["id"] is None and broken["error"]["code"] == "invalid_image"
    assert notes["error"]["code"] == "unsupported_media_type"
    assert client.get("/v1/stats").json()["counts"]["images"] == before["images"] + 1

    got = client.get("/v1/images/upload-1").json()
    assert got["metadata"] == {"album": "tests"} and got["content_type"] == "image/png"
    content = client.get("/v1/images/upload-1/content")
    assert content.status_code == 200 and content.headers["content-type"] == "image/png" and content.content == data

    found = client.post("/v1/search/images", json={"text": src.captions[0], "limit": 20,
                                                   "filter": {"album": "tests"}}).json()["results"]
    assert [x["id"] for x in found] == ["upload-1"]

    again = client.post("/v1/images", files=[("files", ("mine.png", _png((1, 2, 3)), "image/png"))],
                        data={"ids": "upload-1"})
    assert again.json()["items"][0]["id"] == "upload-1"  # same id: replaced, not duplicated
    assert client.get("/v1/stats").json()["counts"]["images"] == before["images"] + 1
    assert client.get("/v1/images/upload-1").json()["metadata"] == {}

    assert client.delete("/v1/images/upload-1").status_code == 204
    assert client.get("/v1/images/upload-1").status_code == 404
    assert client.delete("/v1/images/upload-1").status_code == 404
    assert client.get("/v1/stats").json()["counts"] == before
    found = client.post("/v1/search/images", json={"text": src.captions[0], "limit": 100}).json()["results"]
    assert "upload-1" not in {x["id"] for x in found}


def test_texts_endpoints(client: httpx.Client) -> None:
    before = client.get("/v1/stats").json()["counts"]["texts"]
    r = client.post("/v1/texts", json={"items": [
        {"id": "cap-1", "text": "a tiny purple triangle far away", "metadata": {"lang": "en"}},
        {"text": "   "},
        {"id": "cap-2", "text": "x" * 500},
    ]})
    assert r.status_code == 200
    items = r.json()["items"]
    assert items[0] == {"filename": None, "id": "cap-1", "error": None, "duplicate_of": None}
    assert items[1]["error"]["code"] == "invalid_text" and "empty" in items[1]["error"]["message"]
    assert items[2]["error"]["code"] == "invalid_text" and "limit of 200" in items[2]["error"]["message"]
    assert client.get("/v1/texts/cap-1").json() == {"id": "cap-1", "text": "a tiny purple triangle far away",
                                                     "image_id": None, "metadata": {"lang": "en"}}
    assert client.get("/v1/stats").json()["counts"]["texts"] == before + 1
    assert client.delete("/v1/texts/cap-1").status_code == 204
    assert client.get("/v1/texts/cap-1").status_code == 404
    assert client.get("/v1/stats").json()["counts"]["texts"] == before
