"""Where the images of `finesearch index images` come from: files, folders (recursively) and list files
named on the command line, a metadata file beside them, and the indexed images whose files are gone.

Imports stay light (no torch), so the CLI's `--help` answers at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.model.images import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from .pipeline import Indexer

LIST_SUFFIXES = frozenset({".txt", ".lst"})


class MissingPaths(FileNotFoundError):
    """Inputs named on the command line that do not exist: nothing is indexed, the command exits 1."""


def expand_paths(paths: list[Path]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(file, root it was found under) for every image, and the files a folder held that are no image type
    finesearch reads (skipped, with the reason). A named path that does not exist raises `MissingPaths`."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise MissingPaths(f"no such file or directory: {', '.join(missing)}")
    found: list[tuple[Path, Path]] = []
    other: list[str] = []
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file() or f.name.startswith("."):
                    continue
                (found.append((f, p)) if f.suffix.lower() in IMAGE_SUFFIXES else other.append(str(f)))
        elif p.suffix.lower() in LIST_SUFFIXES:
            for line in p.read_text().splitlines():
                if line.strip():
                    f = Path(line.strip())
                    f = f if f.is_absolute() else p.parent / f
                    found.append((f, f.parent))
        else:
            found.append((p, p.parent))
    return found, other


def load_metadata(path: Path | None) -> dict[str, dict[str, Any]]:
    from .items import metadata_entry

    if path is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:  # a line nested past the parser's stack is no JSON
            raise SystemExit(f"finesearch: error: {path}:{n}: not JSON: {exc or 'nested too deeply'}") from exc
        if not isinstance(row, dict):
            raise SystemExit(f"finesearch: error: {path}:{n}: each line must be a JSON object")
        key, entry = metadata_entry(row)
        if not key:
            raise SystemExit(f"finesearch: error: {path}:{n}: each line needs a \"file\" key")
        out[key] = entry
    return out


def prune_missing(indexer: Indexer, folders: list[Path]) -> list[str]:
    """Delete the images indexed from files under `folders` that no longer exist; returns their ids."""
    from .stores import IMAGES

    roots = [f.resolve() for f in folders]
    gone = [p["item_id"] for p in indexer.store.scroll(IMAGES)
            if isinstance(p.get("uri"), str) and p["uri"].startswith("/")
            and any(Path(p["uri"]).is_relative_to(r) for r in roots) and not Path(p["uri"]).exists()]
    for lo in range(0, len(gone), 512):
        indexer.delete(IMAGES, gone[lo:lo + 512])
    return gone
