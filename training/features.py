"""Backbone features of a whole dataset, computed once and cached in one safetensors file.

Matcher epochs and evaluations read these instead of re-running the backbone.
The cache key is the backbone fingerprint plus the dataset's item list, so a
retrained backbone or another split never reads stale features. The cache is
training's own: it is written once and read whole, so it needs none of the
token bank's appends, deletes or locking (indexer/tokenbank.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .datasets import CaptionedImage
from .model.backbone import Backbone
from .model.images import load_for_model
from .model.tokens import pad_words
from .progress import progress_bar

CACHE_FORMAT = 2  # 1: token banks per modality; 2: one safetensors file


@dataclass
class Features:
    image_ids: list[str]
    img_glob: torch.Tensor  # [Ni, d] float32
    img_tok: torch.Tensor  # [Ni, M, d] float16
    txt_img: torch.Tensor  # [Nt] int64: index of each caption's image
    txt_glob: torch.Tensor  # [Nt, d]
    txt_tok: torch.Tensor  # [Nt, L, d] float16
    txt_mask: torch.Tensor  # [Nt, L] bool
    texts: list[str]

    def subset(self, image_idx: Sequence[int]) -> Features:
        """Images `image_idx` and exactly their captions (COCO 1K folds)."""
        idx = torch.as_tensor(list(image_idx), dtype=torch.long)
        remap = torch.full((len(self.image_ids),), -1, dtype=torch.long)
        remap[idx] = torch.arange(len(idx))
        keep = remap[self.txt_img] >= 0
        t = torch.nonzero(keep).squeeze(1)
        return Features([self.image_ids[i] for i in idx.tolist()], self.img_glob[idx], self.img_tok[idx],
                        remap[self.txt_img[t]], self.txt_glob[t], self.txt_tok[t], self.txt_mask[t],
                        [self.texts[i] for i in t.tolist()])


def load_pixels(items: Sequence[CaptionedImage], images_dir: Path, size: int, workers: int = 4,
                progress: bool = False) -> np.ndarray:
    """All images of a dataset as one uint8 array [N, size, size, 3]; decoding on worker threads."""
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = load_for_model(images_dir / items[i].filename, size)

    with ThreadPoolExecutor(workers) as pool:
        list(progress_bar(pool.map(one, range(len(items))), total=len(items), disable=not progress, unit="img",
                  desc="decode"))
    return out


@torch.inference_mode()
def extract(backbone: Backbone, items: Sequence[CaptionedImage], images_dir: Path, batch_size: int = 128,
            workers: int = 4, progress: bool = False, pixels: np.ndarray | None = None) -> Features:
    if pixels is None:
        pixels = load_pixels(items, images_dir, backbone.image_size, workers, progress)
    gl, tk = [], []
    for lo in progress_bar(range(0, len(items), batch_size), disable=not progress, desc="encode images"):
        f = backbone.encode_images(pixels[lo:lo + batch_size])
        gl.append(f.globals.cpu())
        tk.append(f.tokens.cpu().half())
    texts = [c for it in items for c in it.captions]
    txt_img = torch.tensor([i for i, it in enumerate(items) for _ in it.captions], dtype=torch.long)
    tg, tt, tm = [], [], []
    width = backbone.max_words
    for lo in progress_bar(range(0, len(texts), batch_size * 2), disable=not progress, desc="encode texts"):
        f = backbone.encode_texts(texts[lo:lo + batch_size * 2])
        tg.append(f.globals.cpu())
        tok, mask = pad_words(f.tokens.cpu().half(), f.mask.cpu(), width)
        tt.append(tok)
        tm.append(mask)
    d = backbone.embed_dim
    return Features(
        [it.image_id for it in items],
        torch.cat(gl) if gl else torch.zeros(0, d), torch.cat(tk) if tk else torch.zeros(0, 1, d).half(),
        txt_img, torch.cat(tg) if tg else torch.zeros(0, d),
        torch.cat(tt) if tt else torch.zeros(0, width, d).half(),
        torch.cat(tm) if tm else torch.zeros(0, width, dtype=torch.bool), texts,
    )


def cache_key(backbone: Backbone, items: Sequence[CaptionedImage]) -> str:
    h = hashlib.sha256(f"{CACHE_FORMAT}:{backbone.fingerprint}".encode())
    for it in items:
        h.update(json.dumps([it.image_id, it.filename, it.captions]).encode())
    return h.hexdigest()[:20]


def cached_extract(backbone: Backbone, items: Sequence[CaptionedImage], images_dir: Path, cache_dir: Path,
                   **kw: object) -> Features:
    """`extract`, stored under cache_dir/<key>: the tensors in features.safetensors (caption tokens without
    their padding), ids and texts in index.json. The safetensors file is renamed into place last, so a run
    killed while writing leaves no cache that looks complete."""
    folder = cache_dir / cache_key(backbone, items)
    done = folder / "features.safetensors"
    if done.is_file():
        g = load_file(str(done))
        meta = json.loads((folder / "index.json").read_text())
        txt_mask = g["txt_mask"]
        txt_tok = g["txt_tok"].new_zeros(*txt_mask.shape, g["txt_tok"].shape[-1])
        txt_tok[txt_mask] = g["txt_tok"]
        return Features(meta["image_ids"], g["img_glob"], g["img_tok"], g["txt_img"], g["txt_glob"], txt_tok,
                        txt_mask, meta["texts"])
    feats = extract(backbone, items, images_dir, **kw)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").write_text(json.dumps({"image_ids": feats.image_ids, "texts": feats.texts}))
    tmp = folder / f".features.{os.getpid()}.tmp"
    save_file({"img_glob": feats.img_glob.contiguous(), "img_tok": feats.img_tok.contiguous(),
               "txt_img": feats.txt_img, "txt_glob": feats.txt_glob.contiguous(),
               "txt_tok": feats.txt_tok[feats.txt_mask].contiguous(), "txt_mask": feats.txt_mask.contiguous()},
              str(tmp))
    os.replace(tmp, done)
    return feats
