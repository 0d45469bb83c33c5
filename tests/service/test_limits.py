"""Every limit and bad input: the right status, one error shape, the server keeps serving, nothing stored changes."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from service.config import Settings

from .conftest import Server, start_server


def _png(size: tuple[int, int] = (64, 64), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def _error(r: httpx.Response, status: int, code: str | None = None) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert "Traceback" not in body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]["message"]


@pytest.fixture()
def counts(client: httpx.Client) -> Iterator[dict[str, int]]:
    before = client.get("/v1/stats").json()["counts"]
    yield before
    assert client.get("/v1/stats").json()["counts"] == before, "a rejected request changed the index"
    assert client.get("/healthz").status_code == 200


def test_search_validation(client: httpx.Client, counts: dict[str, int]) -> None:
    assert "limit" in _error(client.post("/v1/search/images", json={"text": "x", "limit": 0}), 422, "invalid_request")
    assert "limit must be between 1 and 100" in _error(
        client.post("/v1/search/images", json={"text": "x", "limit": 500}), 422)
    _error(client.post("/v1/search/images", json={"text": "x", "candidates": 5000}), 422)
    _error(client.post("/v1/search/images", json={"text": "x", "offset": -1}), 422)
    _error(client.post("/v1/search/images", json={"text": ""}), 422)
    assert "empty" in _error(client.post("/v1/search/images", json={"text": "   "}), 422, "invalid_text")
    assert "limit of 200" in _error(client.post("/v1/search/images", json={"text": "y" * 300}), 422)
    _error(client.post("/v1/search/images", json={"txt": "typo"}), 422)
    _error(client.post("/v1/search/images", json={"text": "x", "filter": {"a": 1.5}}), 422)
    _error(client.post("/v1/search/images", json={"text": "x", "filter": {"a": []}}), 422)
    _error(client.post("/v1/search/images", content=b"{not json", headers={"content-type": "application/json"}), 422)
    _error(client.post("/v1/search/images", content=b"text=x", headers={"content-type": "text/plain"}), 415,
           "unsupported_media_type")
    _error(client.post("/v1/search/texts", content=b"x", headers={"content-type": "text/plain"}), 415)
    _error(client.post("/v1/search/texts", json={"image_id": "nope"}), 404, "not_found")
    _error(client.post("/v1/search/texts", files={"other": ("a", b"x")}), 422)
    _error(client.post("/v1/search/texts", files={"image": ("a.png", _png())}, data={"limit": "many"}), 422)
    _error(client.get("/v1/images/nope"), 404, "not_found")
    _error(client.get("/v1/images/nope/content"), 404)
    _error(client.get("/v1/texts/nope"), 404)
    _error(client.get("/v1/jobs/not-a-job"), 404)
    _error(client.get("/v1/nothing-here"), 404)


def test_bad_images(client: httpx.Client, counts: dict[str, int]) -> None:
    bomb = _png((12_000, 12_000), "1")  # 144 MP declared in a small file
    assert len(bomb) < 1_000_000
    assert "too large" in _error(client.post("/v1/search/texts", files={"image": ("b.png", bomb, "image/png")}), 413,
                                 "image_too_large")
    _error(client.post("/v1/search/texts", files={"image": ("c.png", b"\x89PNG\r\n\x1a\n broken", "image/png")}), 400,
           "invalid_image")
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, "ICO")
    _error(client.post("/v1/search/texts", files={"image": ("i.ico", ico.getvalue())}), 415)
    _error(client.post("/v1/search/texts", files={"image": ("big.png", b"\x00" * 1_500_000)}), 413)
    r = client.post("/v1/images", files=[("files", ("b.png", bomb, "image/png"))])
    assert r.status_code == 200 and r.json()["items"][0]["error"]["code"] == "image_too_large"


def test_upload_limits(client: httpx.Client, counts: dict[str, int]) -> None:
    files = [("files", (f"{k}.png", _png(), "image/png")) for k in range(5)]
    assert "limit is 4" in _error(client.post("/v1/images", files=files), 413)
    _error(client.post("/v1/images", content=b"x" * 3_000_000, headers={"content-type": "multipart/form-data; b=x"}),
           413, "too_large")
    _error(client.post("/v1/images", json={"files": []}), 415)
    _error(client.post("/v1/images", files=[("files", ("a.png", _png()))], data={"ids": '["a", "b"]'}), 422)
    _error(client.post("/v1/images", files=[("files", ("a.png", _png())), ("files", ("b.png", _png()))],
                       data={"ids": '["same", "same"]'}), 422)
    _error(client.post("/v1/images", files=[("files", ("a.png", _png()))], data={"metadata": "[1]"}), 422)
    _error(client.post("/v1/texts", json={"items": []}), 422)
    _error(client.post("/v1/texts", json={"items": [{"id": "d", "text": "a"}, {"id": "d", "text": "b"}]}), 422)


def test_chunked_body_over_the_limit(client: httpx.Client, counts: dict[str, int]) -> None:
    def chunks(head: bytes = b"") -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        yield head
        for _ in range(40):
            yield b"x" * 100_000

    part = (b'--zz\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    r = client.post("/v1/images", content=chunks(part), headers={"content-type": "multipart/form-data; boundary=zz"})
    _error(r, 413, "too_large")
    r = client.post("/v1/texts", content=chunks(b'{"items": [{"text": "'), headers={"content-type": "application/json"})
    _error(r, 413, "too_large")


@pytest.fixture(scope="module")
def locked(model_dir, tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    srv = start_server(Settings(model=model_dir, data_dir=tmp_path_factory.mktemp("locked"), api_key="s3cret",
                                auth_reads=False))
    yield srv
    srv.stop()


def test_api_key_guards_writes(locked: Server) -> None:
    with locked.client() as c:
        assert c.post("/v1/search/images", json={"text": "a red circle"}).status_code == 200  # reads stay open
        r = c.post("/v1/texts", json={"items": [{"text": "hello"}]})
        _error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        _error(c.post("/v1/texts", json={"items": [{"text": "hello"}]}, headers={"Authorization": "Bearer nope"}), 401)
        _error(c.delete("/v1/texts/x"), 401)
        _error(c.post("/v1/jobs/index", files={"archive": ("a.zip", b"x")}), 401)
        _error(c.post("/v1/admin/compact"), 401)  # admin work is a write
        _error(c.post("/v1/admin/compact", headers={"Authorization": "Bearer nope"}), 401)
        ok = c.post("/v1/texts", json={"items": [{"text": "hello"}]}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["indexed"] == 1
    locked.settings.auth_reads = True
    try:
        with locked.client() as c:
            _error(c.post("/v1/search/images", json={"text": "a red circle"}), 401)
            _error(c.get("/v1/stats"), 401)
            assert c.get("/v1/stats", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert c.get("/healthz").status_code == 200
    finally:
        locked.settings.auth_reads = False
