"""Bulk indexing jobs: an uploaded tar/zip archive processed in the background.

Job state lives in `<data>/jobs/<id>.json`, rewritten atomically after every
batch, so a job can be listed after it finished and after a restart; a job
that a restart interrupted is queued again (indexing skips what was done).
Extraction writes regular files only, never outside its folder: absolute
paths, `..`, symlinks, hard links and devices are skipped and reported.
"""

from __future__ import annotations

import json
import logging
import shutil
import stat
import tarfile
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import IO, Any

from indexer.cli import IMAGE_SUFFIXES
from indexer.pipeline import ImageItem, Summary, TextItem, metadata_entry
from training.images import ImageRejected, probe_image

log = logging.getLogger("finesearch.jobs")
MAX_ERRORS = 1000


class ArchiveError(ValueError):
    pass


def safe_name(name: str) -> str | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or not p.parts or any(part in ("..", "") for part in p.parts) or ":" in p.parts[0]:
        return None
    return str(p)


def _copy_limited(src: IO[bytes], dst: Path, budget: int) -> int:
    written = 0
    with open(dst, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > budget:
                raise ArchiveError("archive expands beyond the size limit")
            out.write(chunk)
    return written


def safe_extract(archive: Path, dest: Path, max_files: int, max_bytes: int) -> list[dict[str, str]]:
    """Extract regular files only; returns the entries skipped and why."""
    dest.mkdir(parents=True, exist_ok=True)
    skipped: list[dict[str, str]] = []
    total = files = 0

    def target(name: str) -> Path | None:
        nonlocal files
        clean = safe_name(name)
        if clean is None:
            skipped.append({"item": name, "reason": "unsafe path (absolute or '..'); skipped"})
            return None
        files += 1
        if files > max_files:
            raise ArchiveError(f"archive holds more than {max_files} files")
        path = dest / clean
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if stat.S_ISLNK(info.external_attr >> 16):
                    skipped.append({"item": info.filename, "reason": "symbolic link; skipped"})
                    continue
                path = target(info.filename)
                if path is not None:
                    with zf.open(info) as src:
                        total += _copy_limited(src, path, max_bytes - total)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:
                if m.isdir():
                    continue
                if not m.isfile():
                    kind = "symbolic link" if m.issym() else "hard link" if m.islnk() else "special file"
                    skipped.append({"item": m.name, "reason": f"{kind}; skipped"})
                    continue
                path = target(m.name)
                src = tf.extractfile(m) if path is not None else None
                if path is not None and src is not None:
                    total += _copy_limited(src, path, max_bytes - total)
    else:
        raise ArchiveError("not a tar or zip archive")
    return skipped


def _read_jsonl(path: Path, errors: list[dict[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
            rows.append(row)
        except ValueError as exc:
            errors.append({"item": f"{path.name}:{n}", "reason": f"invalid JSON line: {exc}"})
    return rows


class JobManager:
    def __init__(self, engine: Any, root: Path) -> None:
        self.engine = engine
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="jobs")
        self._resume()

    # ------------------------------------------------------------- state
    def _file(self, job_id: str) -> Path:
        return self.root / f"{job_id}.json"

    def _save(self, job: dict[str, Any]) -> None:
        tmp = self._file(job["id"]).with_suffix(".tmp")
        tmp.write_text(json.dumps(job))
        tmp.replace(self._file(job["id"]))

    def get(self, job_id: str) -> dict[str, Any] | None:
        try:
            uuid.UUID(job_id)
        except ValueError:
            return None
        f = self._file(job_id)
        return json.loads(f.read_text()) if f.is_file() else None

    def list(self) -> list[dict[str, Any]]:
        jobs = [json.loads(f.read_text()) for f in self.root.glob("*.json")]
        return sorted(jobs, key=lambda j: -j["created"])

    def _resume(self) -> None:
        for job in self.list():
            if job["state"] in ("queued", "running"):
                if (self.root / job["id"] / "archive").is_file():
                    job.update(state="queued", message="re-queued after a restart")
                    self._save(job)
                    self._pool.submit(self._run, job["id"])
                else:
                    job.update(state="failed", message="interrupted by a restart; the archive is gone",
                               finished=time.time())
                    self._save(job)

    # -------------------------------------------------------------- work
    def new_upload_path(self) -> tuple[str, Path]:
        job_id = str(uuid.uuid4())
        folder = self.root / job_id
        folder.mkdir()
        return job_id, folder / "archive"

    def submit(self, job_id: str, filename: str | None) -> dict[str, Any]:
        job = {"id": job_id, "state": "queued", "created": time.time(), "started": None, "finished": None,
               "total": 0, "done": 0, "failed": 0, "indexed_images": 0, "indexed_texts": 0, "items_per_s": 0.0,
               "message": f"archive {filename or ''}".strip(), "errors": []}
        self._save(job)
        self._pool.submit(self._run, job_id)
        return job

    def discard(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def _run(self, job_id: str) -> None:
        job = self.get(job_id)
        if job is None:
            return
        folder = self.root / job_id
        extract = folder / "files"
        job.update(state="running", started=time.time())
        self._save(job)
        s = self.engine.settings
        try:
            shutil.rmtree(extract, ignore_errors=True)
            job["errors"] = safe_extract(folder / "archive", extract, s.max_archive_files, s.max_archive_bytes)
            self._index(job, extract)
            job["state"] = "succeeded"
        except ArchiveError as exc:
            job.update(state="failed", message=str(exc))
        except Exception as exc:
            log.exception("job %s failed", job_id)
            job.update(state="failed", message=f"internal error: {type(exc).__name__}")
        finally:
            job["finished"] = time.time()
            job["errors"] = job["errors"][:MAX_ERRORS]
            self._save(job)
            shutil.rmtree(folder, ignore_errors=True)

    def _index(self, job: dict[str, Any], root: Path) -> None:
        errors: list[dict[str, str]] = job["errors"]
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        meta: dict[str, dict[str, Any]] = {}
        for mfile in root.rglob("metadata.jsonl"):
            for row in _read_jsonl(mfile, errors):
                key, entry = metadata_entry(row)
                if key:
                    meta[key] = entry
        captions = [row for cfile in root.rglob("captions.jsonl") for row in _read_jsonl(cfile, errors)]
        job["total"] = len(files) + len(captions)
        self._save(job)
        items: list[ImageItem] = []
        names: list[str] = []
        for f in files:
            rel = str(f.relative_to(root))
            m = meta.get(rel) or meta.get(f.name) or {}
            data = f.read_bytes()
            try:
                info = probe_image(data, self.engine.settings.max_image_pixels)
            except ImageRejected as exc:
                errors.append({"item": rel, "reason": str(exc)})
                job["failed"] += 1
                job["done"] += 1
                continue
            digest = self.engine.blobs.put(data)
            items.append(ImageItem(data=data, id=m.get("id"), metadata=m.get("metadata") or {},
                                   extra={"blob": digest, "content_type": info.mime, "filename": rel}))
            names.append(rel)
        t0 = time.perf_counter()
        base_done, base_failed = job["done"], job["failed"]

        def progress(summary: Summary) -> None:
            job["done"] = base_done + summary.indexed + summary.skipped + summary.failed
            job["failed"] = base_failed + summary.failed
            job["indexed_images"] = summary.indexed
            job["items_per_s"] = round(summary.indexed / max(time.perf_counter() - t0, 1e-9), 2)
            self._save(job)

        summary = self.engine.indexer.index_images(items, on_batch=progress)
        progress(summary)
        ids = {name: iid for name, iid in zip(names, summary.ids, strict=True)}
        for pos, fail in summary.errors.items():
            errors.append({"item": names[pos], "reason": fail.reason})
        texts = []
        for n, row in enumerate(captions):
            image = row.get("image") or row.get("file")
            text = row.get("caption") or row.get("text")
            if not isinstance(text, str):
                errors.append({"item": f"captions.jsonl:{n + 1}", "reason": "needs a 'caption' string"})
                continue
            texts.append(TextItem(text, id=row.get("id"), metadata=row.get("metadata") or {},
                                  image_id=ids.get(str(image)) or (str(image) if image else None)))
        if texts:
            ts = self.engine.indexer.index_texts(texts)
            job["indexed_texts"] = ts.indexed
            job["failed"] += ts.failed + (len(captions) - len(texts))
            job["done"] += len(captions)
            for f in ts.failures:
                errors.append({"item": f.source, "reason": f.reason})
        else:
            job["failed"] += len(captions)
            job["done"] += len(captions)
        elapsed = max(time.perf_counter() - t0, 1e-9)
        job["items_per_s"] = round((job["indexed_images"] + job["indexed_texts"]) / elapsed, 2)
        self.engine.refresh_gauges()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
