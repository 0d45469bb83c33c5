from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile
from pathlib import Path

import httpx

from training.datasets import CaptionedImage


def _wait(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    seen_progress = []
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        seen_progress.append(job["done"])
        if job["state"] in ("succeeded", "failed"):
            job["_progress"] = seen_progress
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def _copy_with_other_bytes(path: Path) -> bytes:
    from PIL import Image, PngImagePlugin

    note = PngImagePlugin.PngInfo()
    note.add_text("Comment", "a copy")
    buf = io.BytesIO()
    with Image.open(path) as im:
        im.save(buf, format="PNG", pnginfo=note)
    assert buf.getvalue() != path.read_bytes()
    return buf.getvalue()


def _tar(entries: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info)
    return buf.getvalue()


def test_archive_job_indexes_images_metadata_and_captions(client: httpx.Client, tmp_path: Path,
                                                          synth: tuple[Path, list[CaptionedImage]]) -> None:
    root, items = synth
    chosen = items[20:32]
    # new files (other bytes, same pixels), and one photo the index already holds as it is
    entries = {f"photos/{it.filename}": _copy_with_other_bytes(root / "images" / it.filename) for it in chosen}
    known = items[33]
    entries["photos/again.png"] = (root / "images" / known.filename).read_bytes()
    entries["photos/broken.png"] = b"\x89PNG broken"
    entries["metadata.jsonl"] = "\n".join(json.dumps({"file": f"photos/{it.filename}", "id": f"job-{it.image_id}",
                                                      "metadata": {"source": "job"}}) for it in chosen).encode()
    entries["captions.jsonl"] = "\n".join(json.dumps({"image": f"photos/{it.filename}", "caption": it.captions[0],
                                                      "id": f"jobcap-{it.image_id}"}) for it in chosen).encode()
    entries["captions.jsonl"] += b"\n" + json.dumps({"image": "photos/again.png", "caption": "seen before",
                                                     "id": "jobcap-again"}).encode()
    link = tarfile.TarInfo("photos/escape.png")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    evil = tarfile.TarInfo("../../outside.png")
    evil.size = 0
    before = client.get("/v1/stats").json()["counts"]
    r = client.post("/v1/jobs/index", files={"archive": ("batch.tar.gz", _tar(entries, [link, evil]),
                                                         "application/gzip")})
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["total"] == 14 + 13 and job["done"] == job["total"]
    assert job["indexed_images"] == 12 and job["indexed_texts"] == 13 and job["failed"] == 1
    reasons = {e["item"]: e["reason"] for e in job["errors"]}
    assert "symbolic link" in reasons["photos/escape.png"]
    assert "unsafe path" in reasons["../../outside.png"]
    assert any("broken.png" in k for k in reasons)
    assert not (tmp_path.parent / "outside.png").exists()
    after = client.get("/v1/stats").json()["counts"]
    assert after["images"] == before["images"] + 12 and after["texts"] == before["texts"] + 13
    # one item per photo: the photo already indexed was not stored again; its caption links to that item
    assert client.get("/v1/texts/jobcap-again").json()["image_id"] == known.image_id
    found = client.post("/v1/search/images", json={"text": chosen[0].captions[0], "limit": 50,
                                                   "filter": {"source": "job"}}).json()["results"]
    assert {x["id"] for x in found} == {f"job-{it.image_id}" for it in chosen}
    cap = client.get(f"/v1/texts/jobcap-{chosen[0].image_id}").json()
    assert cap["image_id"] == f"job-{chosen[0].image_id}"
    assert client.get(f"/v1/images/job-{chosen[0].image_id}/content").status_code == 200
    listed = client.get("/v1/jobs").json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]
    for it in chosen:  # leave the shared index as the other tests expect it
        client.delete(f"/v1/images/job-{it.image_id}")
        client.delete(f"/v1/texts/jobcap-{it.image_id}")
    client.delete("/v1/texts/jobcap-again")


def test_zip_job_and_bad_archives(client: httpx.Client, synth: tuple[Path, list[CaptionedImage]]) -> None:
    root, items = synth
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.png", _copy_with_other_bytes(root / "images" / items[40].filename))
        zf.writestr("/abs/b.png", _copy_with_other_bytes(root / "images" / items[41].filename))
    r = client.post("/v1/jobs/index", files={"archive": ("x.zip", buf.getvalue(), "application/zip")})
    job = _wait(client, r.json()["id"])
    assert job["state"] == "succeeded" and job["indexed_images"] == 1
    assert "unsafe path" in job["errors"][0]["reason"]
    bad = client.post("/v1/jobs/index", files={"archive": ("x.zip", b"definitely not an archive")})
    failed = _wait(client, bad.json()["id"])
    assert failed["state"] == "failed" and "not a tar or zip" in failed["message"]
    big = client.post("/v1/jobs/index", files={"archive": ("x.tar", b"\x00" * 6_000_000)})
    assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    # clean up the single indexed image (content-hash id)
    for res in client.post("/v1/search/images", json={"text": items[40].captions[0], "limit": 100}).json()["results"]:
        if not res["id"].isdigit():
            client.delete(f"/v1/images/{res['id']}")


def test_several_jobs_run_at_once(server, client: httpx.Client, monkeypatch, synth) -> None:  # type: ignore[no-untyped-def]
    """max_concurrent_jobs (2 by default): both jobs must be inside the indexer together to pass the barrier."""
    import threading

    root, items = synth
    barrier = threading.Barrier(2, timeout=20)
    real = server.engine.indexer.index_images

    def both_at_once(*args, **kwargs):  # type: ignore[no-untyped-def]
        if threading.current_thread().name.startswith("jobs"):
            barrier.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(server.engine.indexer, "index_images", both_at_once)
    before = client.get("/v1/stats").json()["counts"]
    ids = []
    for k in (50, 51):
        meta = json.dumps({"file": "a.png", "id": f"conc-{k}"}).encode()
        archive = _tar({"a.png": _copy_with_other_bytes(root / "images" / items[k].filename), "metadata.jsonl": meta})
        ids.append(client.post("/v1/jobs/index", files={"archive": ("a.tar.gz", archive)}).json()["id"])
    jobs = [_wait(client, i) for i in ids]
    assert [j["state"] for j in jobs] == ["succeeded", "succeeded"], jobs
    assert client.get("/v1/stats").json()["counts"]["images"] == before["images"] + 2
    for k in (50, 51):
        assert client.delete(f"/v1/images/conc-{k}").status_code == 204
