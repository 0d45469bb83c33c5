"""Extracting a bulk job's tar or zip archive without trusting it.

Only regular files are written, each name once, never outside the destination: absolute paths, `..`,
symlinks, hard links, devices, nested archives and repeated entry names are skipped and reported per
entry. The archive's total expanded size and file count are capped while it is read (a zip bomb stops at
the cap, not at the end), and an image over the byte limit is not written at all: its declared size is
checked first, and the bytes actually copied are counted, since a tar header can lie.
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from training.model.images import IMAGE_SUFFIXES

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".gz", ".bz2", ".tbz2", ".xz", ".txz", ".zst", ".7z", ".rar")


class ArchiveError(ValueError):
    """The archive as a whole is refused (not an archive, over a limit): the job fails with this message."""


class _FileTooLarge(Exception):
    pass


def safe_name(name: str) -> str | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or not p.parts or any(part in ("..", "") for part in p.parts) or ":" in p.parts[0]:
        return None
    return str(p)


def _copy_limited(src: IO[bytes], dst: Path, budget: int, file_limit: int | None = None) -> int:
    written = 0
    with open(dst, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > budget:
                raise ArchiveError("archive expands beyond the size limit (max_archive_bytes)")
            if file_limit is not None and written > file_limit:
                raise _FileTooLarge()
            out.write(chunk)
    return written


@dataclass
class Extracted:
    skipped: list[dict[str, str]] = field(default_factory=list)  # entries not extracted, and why
    too_large: dict[str, str] = field(default_factory=dict)  # image entries over max_image_bytes → reason


@dataclass
class _Extraction:
    """One extraction's running state: the names taken, the files and bytes written so far."""

    dest: Path
    max_files: int
    max_bytes: int
    max_image_bytes: int | None
    out: Extracted = field(default_factory=Extracted)
    names: set[str] = field(default_factory=set)
    files: int = 0
    total: int = 0

    def skip(self, name: str, reason: str) -> None:
        self.out.skipped.append({"item": name, "reason": reason})

    def target(self, name: str) -> Path | None:
        """Where entry `name` may be written, or None (skipped, and said why)."""
        clean = safe_name(name)
        if clean is None:
            self.skip(name, "unsafe path (absolute or '..'); skipped")
            return None
        if clean in self.names:
            self.skip(name, "duplicate entry name in the archive; only the first copy was used")
            return None
        if clean.lower().endswith(ARCHIVE_SUFFIXES):
            self.skip(name, "nested archive; not extracted (put its files in the outer archive)")
            return None
        self.names.add(clean)
        self.files += 1
        if self.files > self.max_files:
            raise ArchiveError(f"archive holds more than {self.max_files} files; the limit is {self.max_files} "
                               "(max_archive_files)")
        path = self.dest / clean
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def copy(self, src: IO[bytes], path: Path, declared: int) -> None:
        name = str(path.relative_to(self.dest))
        limit = self.max_image_bytes if path.suffix.lower() in IMAGE_SUFFIXES else None
        if limit is not None and declared > limit:
            self.out.too_large[name] = f"image is {declared} bytes, above the limit of {limit} (max_image_bytes)"
            return
        try:
            self.total += _copy_limited(src, path, self.max_bytes - self.total, limit)
        except _FileTooLarge:
            path.unlink(missing_ok=True)
            self.out.too_large[name] = f"image is more than {limit} bytes, the limit (max_image_bytes)"


def _zip_entries(archive: Path, run: _Extraction) -> Iterator[tuple[IO[bytes], Path, int]]:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                run.skip(info.filename, "symbolic link; skipped")
                continue
            path = run.target(info.filename)
            if path is not None:
                with zf.open(info) as src:
                    yield src, path, info.file_size


def _tar_entries(archive: Path, run: _Extraction) -> Iterator[tuple[IO[bytes], Path, int]]:
    with tarfile.open(archive, "r:*") as tf:
        for m in tf:
            if m.isdir():
                continue
            if not m.isfile():
                kind = "symbolic link" if m.issym() else "hard link" if m.islnk() else "special file"
                run.skip(m.name, f"{kind}; skipped")
                continue
            path = run.target(m.name)
            src = tf.extractfile(m) if path is not None else None
            if path is not None and src is not None:
                yield src, path, m.size


def safe_extract(archive: Path, dest: Path, max_files: int, max_bytes: int,
                 max_image_bytes: int | None = None) -> Extracted:
    """Extract regular files only, each name once; images over `max_image_bytes` are not written."""
    dest.mkdir(parents=True, exist_ok=True)
    run = _Extraction(dest, max_files, max_bytes, max_image_bytes)
    if zipfile.is_zipfile(archive):
        entries = _zip_entries(archive, run)
    elif tarfile.is_tarfile(archive):
        entries = _tar_entries(archive, run)
    else:
        raise ArchiveError("not a tar or zip archive")
    for src, path, declared in entries:
        run.copy(src, path, declared)
    return run.out
