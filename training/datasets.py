"""Readers for captioned-image datasets: Karpathy split JSON, COCO captions JSON, JSONL/CSV pairs.

All three become the same list of `CaptionedImage`, so indexing, training and
evaluation never branch on the file format again.
"""

from __future__ import annotations

import csv
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Format = Literal["karpathy", "coco", "jsonl", "csv"]
FORMATS: tuple[str, ...] = ("karpathy", "coco", "jsonl", "csv")


class DatasetError(ValueError):
    pass


@dataclass
class CaptionedImage:
    image_id: str
    filename: str  # relative to the images directory
    captions: list[str]
    split: str = "all"
    metadata: dict[str, Any] = field(default_factory=dict)


def _karpathy(doc: dict[str, Any]) -> list[CaptionedImage]:
    out = []
    for img in doc.get("images", []):
        fname = img["filename"]
        rel = f"{img['filepath']}/{fname}" if img.get("filepath") else fname
        split = img.get("split", "all")
        out.append(CaptionedImage(
            image_id=str(img.get("cocoid", img.get("imgid", fname))),
            filename=rel,
            captions=[s["raw"] if isinstance(s, dict) else str(s) for s in img.get("sentences", [])],
            split="train" if split == "restval" else split,
            metadata={k: v for k, v in img.items() if k in ("width", "height") or k.startswith("meta_")},
        ))
    return out


def _coco(doc: dict[str, Any]) -> list[CaptionedImage]:
    by_id: OrderedDict[Any, CaptionedImage] = OrderedDict()
    for img in doc.get("images", []):
        meta = {k: img[k] for k in ("width", "height", "license") if k in img}
        by_id[img["id"]] = CaptionedImage(str(img["id"]), img["file_name"], [], "all", meta)
    for ann in doc.get("annotations", []):
        item = by_id.get(ann["image_id"])
        if item is None:
            raise DatasetError(f"caption {ann.get('id')} refers to unknown image id {ann['image_id']}")
        item.captions.append(ann["caption"].strip())
    return list(by_id.values())


def _pairs(rows: list[dict[str, Any]], source: Path) -> list[CaptionedImage]:
    by_file: OrderedDict[str, CaptionedImage] = OrderedDict()
    for n, row in enumerate(rows, 1):
        image = row.get("image") or row.get("file") or row.get("filename")
        caption = row.get("caption") or row.get("text")
        if not image or caption is None:
            raise DatasetError(f"{source}:{n}: each row needs 'image' and 'caption'")
        item = by_file.get(image)
        if item is None:
            extra = {k: v for k, v in row.items() if k not in ("image", "file", "filename", "caption", "text",
                                                                 "split", "id")}
            item = by_file[image] = CaptionedImage(str(row.get("id") or image), image, [],
                                                   str(row.get("split") or "all"), extra)
        item.captions.append(str(caption).strip())
    return list(by_file.values())


def read_dataset(path: str | Path, fmt: str, split: str | None = None) -> list[CaptionedImage]:
    """Read a dataset file; `split` keeps only that split (formats without splits ignore it)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    if fmt not in FORMATS:
        raise DatasetError(f"unknown dataset format {fmt!r}; use one of {', '.join(FORMATS)}")
    try:
        if fmt == "karpathy":
            items = _karpathy(json.loads(path.read_text()))
        elif fmt == "coco":
            items = _coco(json.loads(path.read_text()))
        elif fmt == "jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            items = _pairs(rows, path)
        else:
            with open(path, newline="") as fh:
                items = _pairs(list(csv.DictReader(fh)), path)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path} is not a valid {fmt} dataset: {exc!r}") from exc
    if split and split != "all":
        has_splits = any(it.split != "all" for it in items)
        if has_splits:
            items = [it for it in items if it.split == split]
            if not items:
                raise DatasetError(f"{path} has no images in split {split!r}")
    return items
