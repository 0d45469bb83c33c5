"""Bulk indexing jobs: an uploaded tar/zip archive processed in the background.

Job state lives in `<data>/jobs/<id>.json`, rewritten atomically after every
batch, so a job can be listed after it finished and after a restart; a job
that a restart interrupted is queued again (indexing skips what was done, and
the counters start over, so `done` never passes `total`). Items a job writes
carry its id in their payload, which makes `indexed_*` exact across resumes.
Extraction (service/archives.py) writes regular files only, never outside
the job's folder, and reports what it skipped per item.
Several jobs run at once (`max_concurrent_jobs`); finished folders are renamed
away and deleted on a separate thread, so a huge cleanup never holds a worker.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from indexer.items import Summary, TextItem, metadata_entry
from indexer.stores import IMAGES, TEXTS
from training.model.images import IMAGE_SUFFIXES

from .archives import ArchiveError, safe_extract
from .exceptions import ServiceError
from .ingest import Arrival, admit_all
from .validation import strict_loads

log = logging.getLogger("finesearch.jobs")
MAX_ERRORS = 1000
TRASH_PREFIX = ".trash-"


class _Stopping(Exception):
    """The server is shutting down (SIGTERM): the job stops between batches and resumes at the next start."""


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _read_jsonl(path: Path, errors: list[dict[str, str]], settings: Any) -> list[dict[str, Any]]:
    """Each line parsed as strictly as a request body (depth, NaN, int64, surrogates); bad lines reported."""
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = strict_loads(line.encode(errors="surrogatepass"), settings, what="line")
            if not isinstance(row, dict):
                raise ValueError("not an object")
            rows.append(row)
        except ServiceError as exc:
            errors.append({"item": f"{path.name}:{n}", "reason": exc.message})
        except ValueError as exc:
            errors.append({"item": f"{path.name}:{n}", "reason": f"invalid JSON line: {exc}"})
    return rows


class JobManager:
    def __init__(self, engine: Any, root: Path, workers: int = 2) -> None:
        self.engine = engine
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="jobs")
        self._stopping = threading.Event()
        self._cleaner = ThreadPoolExecutor(1, thread_name_prefix="jobs-cleanup")
        self._sweep()
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
        jobs = []
        for f in self.root.glob("*.json"):
            try:
                jobs.append(json.loads(f.read_text()))
            except (OSError, ValueError):  # removed or being replaced right now
                continue
        return sorted(jobs, key=lambda j: -j["created"])

    def _sweep(self) -> None:
        """At startup: folders without a job file (a crash while an archive was uploaded), trash that a
        crash left behind, and half-written job files go, off the request path."""
        for entry in self.root.iterdir():
            if entry.is_dir() and (entry.name.startswith(TRASH_PREFIX) or not self._file(entry.name).is_file()):
                log.info("removing orphan job folder %s", entry.name)
                self._dispose(entry)
            elif entry.suffix == ".tmp":
                entry.unlink(missing_ok=True)

    def _dispose(self, folder: Path) -> None:
        """Rename the folder out of the way at once; delete it on the cleanup thread."""
        if not folder.exists():
            return
        trash = folder if folder.name.startswith(TRASH_PREFIX) else self.root / f"{TRASH_PREFIX}{uuid.uuid4()}"
        try:
            if trash != folder:
                folder.rename(trash)
        except OSError:
            trash = folder
        self._cleaner.submit(remove_tree, trash)

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
        self._dispose(self.root / job_id)

    def _run(self, job_id: str) -> None:
        job = self.get(job_id)
        if job is None:
            return
        folder = self.root / job_id
        extract = folder / "files"
        # a resumed job starts its counters over: what the last run did is skipped now and counted as done
        job.update(state="running", started=time.time(), done=0, failed=0, errors=[])
        self._save(job)
        s = self.engine.settings
        try:
            self._dispose(extract)  # a resumed job's partial extraction: renamed away, deleted off this worker
            found = safe_extract(folder / "archive", extract, s.max_archive_files, s.max_archive_bytes,
                                 s.max_image_bytes)
            job["errors"] = found.skipped
            self._index(job, extract, found.too_large)
            job["state"] = "succeeded"
        except _Stopping:
            job.update(state="queued", message="interrupted by a shutdown; resumes when the server starts again",
                       errors=job["errors"][:MAX_ERRORS])
            self._save(job)  # the archive stays: the next start re-queues the job
            return
        except ArchiveError as exc:
            job.update(state="failed", message=str(exc))
        except Exception as exc:
            log.exception("job %s failed", job_id)
            job.update(state="failed", message=f"internal error: {type(exc).__name__}")
        job["finished"] = time.time()
        job["errors"] = job["errors"][:MAX_ERRORS]
        self._save(job)
        self._dispose(folder)

    def _index(self, job: dict[str, Any], root: Path, too_large: dict[str, str]) -> None:
        errors: list[dict[str, str]] = job["errors"]
        s = self.engine.settings
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        meta: dict[str, dict[str, Any]] = {}
        for mfile in root.rglob("metadata.jsonl"):
            for row in _read_jsonl(mfile, errors, s):
                key, entry = metadata_entry(row)
                if key:
                    meta[key] = entry
        captions = [row for cfile in root.rglob("captions.jsonl") for row in _read_jsonl(cfile, errors, s)]
        job["total"] = len(files) + len(too_large) + len(captions)
        for name, reason in too_large.items():
            errors.append({"item": name, "reason": reason})
        job["failed"] = job["done"] = len(too_large)
        prior_images = job.get("indexed_images", 0)  # from a run a restart interrupted; made exact at the end
        job["indexed_images"] = job["indexed_texts"] = 0
        self._save(job)
        t0 = time.perf_counter()
        ids, n_images = self._index_images(job, root, files, meta, prior_images, t0)
        archived = {str(f.relative_to(root)) for f in files} | set(too_large)
        n_texts = self._index_captions(job, captions, ids, archived)
        job["items_per_s"] = round((n_images + n_texts) / max(time.perf_counter() - t0, 1e-9), 2)
        self.engine.catalog.refresh_gauges()

    def _index_images(self, job: dict[str, Any], root: Path, files: list[Path], meta: dict[str, dict[str, Any]],
                      prior_images: int, t0: float) -> tuple[dict[str, str], int]:
        """The archive's images through the one way in (service/ingest.py), progress saved after each batch →
        (each indexed file's id, how many this run indexed)."""
        errors: list[dict[str, str]] = job["errors"]
        tag = {"job": job["id"]}
        names = [str(f.relative_to(root)) for f in files]
        arrivals = []
        for f, rel in zip(files, names, strict=True):
            m = meta.get(rel) or meta.get(f.name) or {}
            arrivals.append(Arrival(rel, f, id=m.get("id"), metadata=m.get("metadata") or {}, extra=tag))
        admitted = admit_all(arrivals, self.engine.settings, self.engine.blobs)  # an upload's limits
        for pos, exc in admitted.refused.items():
            errors.append({"item": names[pos], "reason": str(exc)})
        job["failed"] += len(admitted.refused)
        job["done"] += len(admitted.refused)
        names = [names[pos] for pos in admitted.positions]
        base_done, base_failed = job["done"], job["failed"]

        def progress(summary: Summary) -> None:
            if self._stopping.is_set():  # between two batches: everything written so far is whole
                raise _Stopping()
            job["done"] = base_done + summary.indexed + summary.skipped + summary.failed
            job["failed"] = base_failed + summary.failed
            job["indexed_images"] = prior_images + summary.indexed
            job["items_per_s"] = round(summary.indexed / max(time.perf_counter() - t0, 1e-9), 2)
            self._save(job)

        summary = self.engine.indexer.index_images(admitted.items, on_batch=progress)
        progress(summary)
        ids = {name: iid for name, iid in zip(names, summary.ids, strict=True) if iid is not None}
        for pos, fail in summary.errors.items():
            errors.append({"item": names[pos], "reason": fail.reason})
        job["indexed_images"] = self._written_by(job["id"], IMAGES, ids.values())
        return ids, summary.indexed

    def _index_captions(self, job: dict[str, Any], captions: list[dict[str, Any]], ids: dict[str, str],
                        archived: set[str]) -> int:
        """captions.jsonl's rows, each tied to its image by file name (this archive's) or id (the index's)."""
        errors: list[dict[str, str]] = job["errors"]
        texts, text_pos = [], []
        for n, row in enumerate(captions):
            image = row.get("image") or row.get("file")
            text = row.get("caption") or row.get("text")
            where = f"captions.jsonl:{n + 1}"
            if not isinstance(text, str):
                errors.append({"item": where, "reason": "needs a 'caption' string"})
                continue
            image_id = ids.get(str(image)) if image else None
            if image and image_id is None:
                image_id = str(image)  # an id already in the index, or a file of this archive that failed
                if image_id in archived:
                    errors.append({"item": where, "reason": f"its image {image_id!r} was not indexed"})
                    continue
            texts.append(TextItem(text, id=row.get("id"), metadata=row.get("metadata") or {}, image_id=image_id,
                                  extra={"job": job["id"]}))
            text_pos.append(where)
        ts = self.engine.indexer.index_texts(texts, max_chars=self.engine.settings.max_text_chars)
        job["failed"] += ts.failed + (len(captions) - len(texts))
        job["done"] += len(captions)
        for pos, fail in ts.errors.items():
            errors.append({"item": text_pos[pos], "reason": fail.reason})
        job["indexed_texts"] = self._written_by(job["id"], TEXTS, (i for i in ts.ids if i is not None))
        return ts.indexed

    def _written_by(self, job_id: str, collection: str, ids: Iterable[str]) -> int:
        """How many of `ids` this job wrote, in this run or one a restart interrupted (their payload says so)."""
        unique = list(dict.fromkeys(ids))
        store = self.engine.store
        return sum(1 for lo in range(0, len(unique), 512)
                   for payload, _ in store.retrieve(collection, unique[lo:lo + 512]).values()
                   if payload.get("job") == job_id)

    def close(self) -> None:
        """Stop running jobs at their next batch (they stay queued for the next start), then return, so the
        engine is never closed under a job's feet."""
        self._stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._cleaner.shutdown(wait=False)
