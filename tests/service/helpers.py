"""Small helpers shared by the hostile-input, fuzzing, crash and browser tests."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image


def error(r: httpx.Response, status: int, code: str | None = None) -> str:
    """Assert the one error shape with `status` (and `code`); return the message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "Traceback" not in body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


def state(c: httpx.Client) -> dict[str, int]:
    """Points per collection, after checking that each equals the token bank's live rows (no orphan row,
    no point without features)."""
    stats = c.get("/v1/stats").json()
    out = {}
    for coll in ("images", "texts"):
        points, rows = stats["counts"][coll], stats["token_bank"][coll]["rows"]
        assert points == rows, f"{coll}: {points} Qdrant points but {rows} live token-bank rows"
        out[coll] = points
    return out


def png(size: tuple[int, int] = (48, 48), colour: tuple[int, int, int] = (200, 30, 30), noise: bool = False) -> bytes:
    buf = io.BytesIO()
    if noise:
        arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(buf, "PNG", compress_level=0)
    else:
        Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def tar(entries: dict[str, bytes] | list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in entries.items() if isinstance(entries, dict) else entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wait_job(c: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.get(f"/v1/jobs/{job_id}").json()
        assert job["done"] <= job["total"] or job["state"] == "queued", job
        if job["state"] in ("succeeded", "failed"):
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def raw_exchange(url: str, requests: list[bytes]) -> list[tuple[int, bytes]]:
    """Send HTTP/1.1 requests one after another on ONE socket; (status, body) of each answer.

    Proves keep-alive survives an answer: a server that dropped the connection makes the next read fail.
    """
    host, port = url.removeprefix("http://").split(":")
    out = []
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        buf = b""
        for req in requests:
            sock.sendall(req)
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection"
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
            assert headers.get("connection", "").lower() != "close", headers
            length = int(headers["content-length"])
            while len(buf) < length:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection"
                buf += chunk
            out.append((int(lines[0].split()[1]), buf[:length]))
            buf = buf[length:]
    return out


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def browser_page(url: str) -> Iterator[Any]:
    """`url` open in Debian's headless Chromium, driven by Playwright (no browser download)."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (scripts/install-system.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/")
            yield page
        finally:
            browser.close()
