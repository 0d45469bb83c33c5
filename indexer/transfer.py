"""Backups and moves of a whole index: `finesearch snapshot create|restore` and `finesearch migrate`.

A snapshot is one tar file that any store can write and any store can read back:

    manifest.json                      format, finesearch version, counts, the index meta (backbone binding)
    points/<collection>/<k>.json       ids and payloads of one batch of points
    points/<collection>/<k>.npy        their global vectors (float32)
    points/<collection>/<k>.features.npz   with features=qdrant: their prepared matcher features, flat
                                       (tokens [T, d] fp16, lengths [n] i64; -1 for a point without them)
    tokens/ blobs/ jobs/               the data directory's token banks, uploaded originals and job records

Points are read through the store's own API (scroll, then retrieve with vectors), so the same file backs up
the embedded Qdrant Edge store or a Qdrant server and restores into either; Qdrant Edge has no snapshot
writer of its own. A server store that keeps the matcher features on its points (features=qdrant) has them
in the snapshot too, and restores into a store that keeps them the same way. The embedded store is opened
under its exclusive lock, so no server or indexer writes while the snapshot is taken; with a Qdrant server,
stop writes first. Restores write the files first and the points after, the order indexing uses, so a
restore that dies halfway never leaves a point without its features.
`migrate` moves the points of an embedded index into a Qdrant server (the token bank stays in the data
directory), batch by batch, skipping what the target already holds: rerun it to resume.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .stores import IMAGES, TEXTS, StoreError, VectorStore

FORMAT = 1
COLLECTIONS = (IMAGES, TEXTS)
FILE_DIRS = ("tokens", "blobs", "jobs")
BATCH = 512


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("finesearch")
    except PackageNotFoundError:
        return "0+unknown"


def point_batches(store: VectorStore, collection: str, batch: int = BATCH
                  ) -> Iterator[tuple[list[str], list[dict[str, Any]], np.ndarray]]:
    """(ids, payloads, vectors) of every point, `batch` at a time."""
    ids: list[str] = []
    for payload in store.scroll(collection, batch=batch):
        ids.append(payload["item_id"])
        if len(ids) == batch:
            yield _fetch(store, collection, ids)
            ids = []
    if ids:
        yield _fetch(store, collection, ids)


def _fetch(store: VectorStore, collection: str, ids: list[str]) -> tuple[list[str], list[dict[str, Any]], np.ndarray]:
    got = store.retrieve(collection, ids, with_vectors=True)
    kept = [i for i in ids if i in got and got[i][1] is not None]  # deleted between scroll and retrieve: gone
    vectors = np.stack([got[i][1] for i in kept]).astype(np.float32) if kept else np.zeros((0, 0), np.float32)
    return kept, [got[i][0] for i in kept], vectors


def _refuse_features(store: VectorStore) -> None:
    if store.holds_features:
        raise StoreError("this store keeps the matcher features on its points (features=qdrant); migrate moves an "
                         "embedded index, whose features are in the token bank, into a server: back this one up "
                         "with `finesearch snapshot create` instead, which carries its features")


def _features_npz(store: VectorStore, collection: str, ids: list[str]) -> bytes:
    """The points' prepared features, flat: tokens [T, d] fp16 and each point's length (-1: none)."""
    got = store.retrieve_features(collection, ids)
    rows = [got[i][1] if i in got else None for i in ids]
    lengths = np.array([-1 if r is None else len(r) for r in rows], dtype=np.int64)
    present = [r for r in rows if r is not None]
    tokens = (np.concatenate(present).astype(np.float16) if present else np.zeros((0, 0), np.float16))
    buf = io.BytesIO()
    np.savez(buf, tokens=tokens, lengths=lengths)
    return buf.getvalue()


def _upsert_with_features(store: VectorStore, collection: str, ids: list[str], vectors: np.ndarray,
                          payloads: list[dict[str, Any]], npz: bytes) -> None:
    with np.load(io.BytesIO(npz), allow_pickle=False) as f:
        tokens, lengths = f["tokens"], f["lengths"]
    starts = np.concatenate([[0], np.cumsum(np.maximum(lengths, 0))])
    if len(lengths) != len(ids) or starts[-1] != len(tokens):
        raise StoreError(f"a features file of {collection} does not match its batch ({len(lengths)} points for "
                         f"{len(ids)}, {int(starts[-1])} tokens for {len(tokens)}): not a complete snapshot")
    have = [k for k in range(len(ids)) if lengths[k] >= 0]
    bare = [k for k in range(len(ids)) if lengths[k] < 0]  # written by an indexer without the model
    if have:
        store.upsert_with_features(collection, [ids[k] for k in have], vectors[have], [payloads[k] for k in have],
                                   [tokens[starts[k]:starts[k + 1]] for k in have])
    if bare:
        store.upsert(collection, [ids[k] for k in bare], vectors[bare], [payloads[k] for k in bare])


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def create_snapshot(store: VectorStore, data_dir: Path, out: Path,
                    progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Write the snapshot to `out` (through `out.partial`, renamed when complete); returns its manifest."""
    meta = store.get_meta()
    if meta is None:
        raise StoreError(f"there is no index to snapshot in {data_dir} (nothing was ever indexed there)")
    partial = out.with_name(out.name + ".partial")
    counts: dict[str, int] = {}
    with tarfile.open(partial, "w") as tar:
        for d in FILE_DIRS:  # the features first: restored before any point that refers to them
            if (data_dir / d).is_dir():
                tar.add(data_dir / d, arcname=d, filter=lambda t: None if t.name.endswith(".lock") else t)
        for coll in COLLECTIONS:
            counts[coll] = 0
            for k, (ids, payloads, vectors) in enumerate(point_batches(store, coll)):
                _add(tar, f"points/{coll}/{k:06d}.json", json.dumps({"ids": ids, "payloads": payloads}).encode())
                _add(tar, f"points/{coll}/{k:06d}.npy", _npy(vectors))
                if store.holds_features:
                    _add(tar, f"points/{coll}/{k:06d}.features.npz", _features_npz(store, coll, ids))
                counts[coll] += len(ids)
            progress(f"{coll}: {counts[coll]} points")
        manifest = {"format": FORMAT, "finesearch_version": _package_version(), "created": time.time(),
                    "backend": store.backend, "features": store.holds_features, "counts": counts, "meta": meta}
        _add(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    partial.replace(out)
    return manifest


def read_manifest(archive: Path) -> dict[str, Any]:
    try:
        with tarfile.open(archive, "r") as tar:
            member = tar.extractfile("manifest.json")
            manifest = json.loads(member.read()) if member else None
    except (tarfile.TarError, KeyError, OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"{archive} is not a complete finesearch snapshot: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{archive}: snapshot format {manifest.get('format') if manifest else None} is not the "
                         f"format {FORMAT} this finesearch reads")
    return manifest


def restore_snapshot(store: VectorStore, data_dir: Path, archive: Path,
                     progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Restore into an empty index (store and data directory); returns the manifest with what was restored."""
    manifest = read_manifest(archive)
    if bool(manifest.get("features")) != store.holds_features:
        where = ("on each point (features=qdrant)", "in the token bank (features=bank)")
        raise StoreError(f"{archive} keeps the matcher features {where[not manifest.get('features')]}, and this "
                         f"store keeps them {where[not store.holds_features]}: restore it with the same --features")
    held = {c: store.count(c) for c in COLLECTIONS}
    if any(held.values()) or store.get_meta() is not None or any((data_dir / d).exists() for d in FILE_DIRS[:1]):
        raise StoreError(f"restore needs an empty index, and {data_dir} (or its Qdrant collections) already holds "
                         f"one ({held}); restore into a new --data-dir or --qdrant-prefix")
    dim = int(manifest["meta"]["dim"])
    with tarfile.open(archive, "r") as tar:
        files = [m for m in tar.getmembers() if m.name.split("/")[0] in FILE_DIRS]
        tar.extractall(data_dir, members=files, filter="data")  # refuses links out and absolute paths
        store.set_meta(manifest["meta"])
        for coll in COLLECTIONS:
            store.ensure_collection(coll, dim)
            names = sorted(m.name for m in tar.getmembers() if m.name.startswith(f"points/{coll}/")
                           and m.name.endswith(".json"))
            n = 0
            for name in names:
                doc = json.loads(tar.extractfile(name).read())  # type: ignore[union-attr]
                vectors = np.load(io.BytesIO(tar.extractfile(name[:-5] + ".npy").read()),  # type: ignore[union-attr]
                                  allow_pickle=False)
                if doc["ids"] and store.holds_features:
                    npz = tar.extractfile(name[:-5] + ".features.npz").read()  # type: ignore[union-attr]
                    _upsert_with_features(store, coll, doc["ids"], vectors, doc["payloads"], npz)
                elif doc["ids"]:
                    store.upsert(coll, doc["ids"], vectors, doc["payloads"])
                n += len(doc["ids"])
            if n != manifest["counts"].get(coll):
                raise StoreError(f"{archive}: {coll} holds {n} points, the manifest says {manifest['counts'][coll]}")
            progress(f"{coll}: {n} points")
    return manifest


def migrate(source: VectorStore, target: VectorStore, progress: Callable[[str], None] = lambda _: None
            ) -> dict[str, dict[str, int]]:
    """Copy every point of `source` into `target`, skipping ids it already holds (resumable)."""
    _refuse_features(source)
    meta = source.get_meta()
    if meta is None:
        raise StoreError("the source holds no index (nothing was ever indexed there)")
    there = target.get_meta()
    if there is not None and there.get("fingerprint") != meta.get("fingerprint"):
        raise StoreError(f"the target already holds an index of another backbone (fingerprint "
                         f"{there.get('fingerprint')}, not {meta.get('fingerprint')}); migrate into a new "
                         "--qdrant-prefix")
    if there is None:
        target.set_meta(meta)
    out: dict[str, dict[str, int]] = {}
    for coll in COLLECTIONS:
        target.ensure_collection(coll, int(meta["dim"]))
        copied = skipped = 0
        for ids, payloads, vectors in point_batches(source, coll):
            have = target.existing(coll, ids)
            todo = [k for k, i in enumerate(ids) if i not in have]
            if todo:
                target.upsert(coll, [ids[k] for k in todo], vectors[todo], [payloads[k] for k in todo])
            copied, skipped = copied + len(todo), skipped + len(ids) - len(todo)
        out[coll] = {"copied": copied, "already_there": skipped, "target_count": target.count(coll)}
        progress(f"{coll}: {copied} copied, {skipped} already there")
    return out
