"""Fault injection with real processes: kill -9 (and SIGTERM) in the middle of `finesearch index images` and of
a bulk job on `finesearch serve`, then start again on the same data directory.

After each: Qdrant points equal live token-bank rows (once `compact` has dropped the orphans a kill between
the feature write and the upsert may leave), the re-run finishes, and the job's progress is true (`done`
never passes `total`; the final counts are exact).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from indexer.stores import IMAGES, open_store
from service.cli import main
from tests.service.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "finesearch-tiny", "--from-scratch", "--seed", "0", "--no-progress"]


def _png(k: int) -> bytes:
    rng = np.random.default_rng(k)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _segments(data: Path, collection: str = IMAGES) -> int:
    folder = data / "tokens" / collection
    return len(list(folder.glob("seg-*.safetensors"))) if folder.is_dir() else 0


def test_kill_9_during_cli_indexing_then_resume(tmp_path: Path) -> None:
    photos, data = tmp_path / "photos", tmp_path / "data"
    for k in range(150):
        sub = photos / f"album{k % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"p{k}.png").write_bytes(_png(k))
    cmd = ["index", "images", str(photos), "--data-dir", str(data), "--id-from", "path", "--batch-size", "2",
           "--workers", "1", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", *cmd], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _until(lambda: _segments(data) >= 5 or proc.poll() is not None, 180, "the indexer to write segments")
        assert proc.poll() is None, "the indexer finished before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    report = tmp_path / "r.json"
    assert main([*cmd, "--report", str(report)]) == 0  # the same command resumes
    r = json.loads(report.read_text())["images"]
    assert r["failed"] == 0 and r["skipped"] > 0 and r["indexed"] + r["skipped"] == 150
    assert main(["index", "compact", "--data-dir", str(data), *TINY[:-1]]) == 0
    store = open_store(data)
    try:
        assert store.count(IMAGES) == 150
        ids = {p["item_id"] for p in store.scroll(IMAGES)}
        assert "album1:p1.png" in ids and not any("/" in i for i in ids)  # --id-from path obeys the id rule
    finally:
        store.close()
    from indexer.tokenbank import TokenBank
    from training.model.backbone import Backbone

    backbone = Backbone.load("finesearch-tiny", from_scratch=True, seed=0, device="cpu")
    assert len(TokenBank(data / "tokens" / IMAGES, backbone.embed_dim, backbone.fingerprint)) == 150


class _Server:
    def __init__(self, data: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(data.parent / f"server-{self.port}.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--data-dir", str(data),
                                      "--port", str(self.port), "--log-level", "warning"], cwd=REPO, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            assert self.proc.poll() is None, (data.parent / f"server-{self.port}.log").read_text()
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        _until(ready, 180, "the server to start")

    def stop(self, sig: int) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(60)
        self.log.close()


@pytest.fixture()
def server_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINESEARCH_")}
    env.update(FINESEARCH_INDEX_BATCH="1", FINESEARCH_DECODE_WORKERS="1", FINESEARCH_MAX_ARCHIVE_FILES="1000")
    yield env


def test_kill_9_and_sigterm_during_a_bulk_job_then_resume(tmp_path: Path, server_env: dict[str, str]) -> None:
    data = tmp_path / "data"
    n_images, n_captions = 240, 20
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        files = {f"imgs/{k}.png": _png(1000 + k) for k in range(n_images)}
        files["captions.jsonl"] = "\n".join(json.dumps({"image": f"imgs/{k}.png", "caption": f"photo number {k}"})
                                            for k in range(n_captions)).encode()
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    seen: list[tuple[int, int]] = []

    def job(srv: _Server, job_id: str) -> dict:
        j = httpx.get(f"{srv.url}/v1/jobs/{job_id}", timeout=10).json()
        assert j["done"] <= j["total"] or j["total"] == 0, j  # never "done 392 / total 360"
        seen.append((j["done"], j["total"]))
        return dict(j)

    srv = _Server(data, server_env)
    job_id = httpx.post(f"{srv.url}/v1/jobs/index", files={"archive": ("a.tar", buf.getvalue())},
                        timeout=60).json()["id"]
    _until(lambda: job(srv, job_id)["done"] >= 40, 180, "the job to make progress")
    srv.stop(signal.SIGKILL)

    srv = _Server(data, server_env)  # kill -9: the job is re-queued and resumes where the index stands
    _until(lambda: job(srv, job_id)["state"] == "running" and job(srv, job_id)["done"] >= 80, 180,
           "the resumed job to make progress")
    srv.stop(signal.SIGTERM)  # graceful: the job stops between two batches and stays queued
    stopped = json.loads((data / "jobs" / f"{job_id}.json").read_text())
    assert stopped["state"] == "queued" and "shutdown" in stopped["message"]

    srv = _Server(data, server_env)
    try:
        _until(lambda: job(srv, job_id)["state"] in ("succeeded", "failed"), 300, "the job to finish")
        final = job(srv, job_id)
        assert final["state"] == "succeeded", final
        assert (final["total"], final["done"], final["failed"]) == (n_images + n_captions,) * 2 + (0,)
        assert (final["indexed_images"], final["indexed_texts"]) == (n_images, n_captions)
        compacted = httpx.post(f"{srv.url}/v1/admin/compact", timeout=120)
        assert compacted.status_code == 200, compacted.text
        stats = httpx.get(f"{srv.url}/v1/stats", timeout=30).json()
        for coll, n in (("images", n_images), ("texts", n_captions)):
            assert stats["counts"][coll] == stats["token_bank"][coll]["rows"] == n, stats
    finally:
        srv.stop(signal.SIGTERM)
    assert seen and all(done <= total for done, total in seen if total)
    store = open_store(data)  # captions indexed after a resume still point at their image's id (content hash)
    try:
        linked = {p["text"]: p["image_id"] for p in store.scroll("texts")}
        assert linked["photo number 3"] == hashlib.sha256(files["imgs/3.png"]).hexdigest()[:32]
    finally:
        store.close()
