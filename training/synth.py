"""Seeded synthetic scenes where the details decide: colours, shapes, sizes and positions.

Each image holds 2–3 objects in a row (left → right) or a column (top → bottom).
Five captions per image come from varied templates: some name every object with
its relation, some only one or two. A share of images come in *twins* that
differ only by swapped colours or swapped positions, the hard case a pooled
global vector tends to confuse and word–patch matching is meant to fix.
Output is a Karpathy-format `dataset.json` plus PNG images.

`style="grid"` draws the second, differently drawn style (training/synth_grid.py): a matcher must
gain on both, not on one generator's quirks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

from PIL import Image, ImageDraw

from . import synth_grid

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str

    def words(self, with_size: bool = True) -> str:
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    layout: str  # "row" (left → right) or "column" (top → bottom)
    jitter: tuple[tuple[int, int], ...]


def _random_scene(rng: random.Random, size: int) -> Scene:
    n = rng.choice((2, 2, 3))
    objs: list[Obj] = []
    while len(objs) < n:
        o = Obj(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(SIZES))
        if all((o.shape, o.colour) != (p.shape, p.colour) for p in objs):
            objs.append(o)
    layout = "row" if n == 3 else rng.choice(("row", "column"))
    j = max(1, size // 32)
    return Scene(tuple(objs), layout, tuple((rng.randint(-j, j), rng.randint(-j, j)) for _ in objs))


def _twin(rng: random.Random, scene: Scene) -> tuple[Scene, str]:
    """Same objects, but colours or positions swapped between two of them."""
    objs = list(scene.objects)
    i, k = rng.sample(range(len(objs)), 2)
    if rng.random() < 0.5 and objs[i].colour != objs[k].colour:
        a, b = objs[i], objs[k]
        objs[i], objs[k] = replace(a, colour=b.colour), replace(b, colour=a.colour)
        kind = "colour-swap"
    else:
        objs[i], objs[k] = objs[k], objs[i]
        kind = "position-swap"
    return replace(scene, objects=tuple(objs)), kind


def render(scene: Scene, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(img)
    n = len(scene.objects)
    cell = size / n
    for idx, (obj, (jx, jy)) in enumerate(zip(scene.objects, scene.jitter, strict=True)):
        frac = 0.85 if obj.size == "large" else 0.45
        extent = min(cell, size) * frac
        along = cell * (idx + 0.5)
        cx, cy = (along, size / 2) if scene.layout == "row" else (size / 2, along)
        cx, cy = cx + jx, cy + jy
        box = (cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
    return img


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def captions(scene: Scene, rng: random.Random) -> list[str]:
    objs = scene.objects
    before, after = ("left of", "right of") if scene.layout == "row" else ("above", "below")
    where = ("on the left", "on the right") if scene.layout == "row" else ("at the top", "at the bottom")
    full_chain = f" {before} ".join(_a(o.words()) for o in objs)
    i, k = sorted(rng.sample(range(len(objs)), 2))
    a, b = objs[i], objs[k]
    caps = [
        full_chain,
        f"{_a(b.words(False))} {after} {_a(a.words(False))}",
        f"{_a(a.words(rng.random() < 0.5))} {before} {_a(b.words(rng.random() < 0.5))}",
        f"{len(objs)} shapes: " + ", ".join(_a(o.words()) for o in objs),
        f"{_a(objs[0].words(False))} {where[0]} and {_a(objs[-1].words(False))} {where[1]}",
    ]
    return caps


class _Style(Protocol):
    def random_scene(self, rng: random.Random, size: int) -> Any: ...
    def twin(self, rng: random.Random, scene: Any) -> tuple[Any, str]: ...
    def render(self, scene: Any, size: int) -> Image.Image: ...
    def captions(self, scene: Any, rng: random.Random) -> list[str]: ...
    def meta(self, scene: Any) -> dict[str, Any]: ...


def _shapes_meta(scene: Scene) -> dict[str, Any]:
    return {"meta_objects": [o.__dict__ for o in scene.objects], "meta_layout": scene.layout}


STYLES: dict[str, Any] = {
    "shapes": SimpleNamespace(random_scene=_random_scene, twin=_twin, render=render, captions=captions,
                              meta=_shapes_meta),
    "grid": synth_grid,
}


def generate(out: str | Path, seed: int = 0, train: int = 10_000, val: int = 1_000, test: int = 1_000,
             size: int = 64, twin_rate: float = 0.4, style: str = "shapes") -> dict[str, Any]:
    """Write `out/images/<split>/<n>.png` and `out/dataset.json` (Karpathy format); deterministic for a seed."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {', '.join(STYLES)}")
    st: _Style = STYLES[style]
    out = Path(out)
    rng = random.Random(seed)
    images: list[dict[str, Any]] = []
    stats: dict[str, int] = {}
    n = 0
    for split, count in (("train", train), ("val", val), ("test", test)):
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        made = 0
        prev: Any = None
        while made < count:
            twin_of = None
            if prev is not None and rng.random() < twin_rate:
                scene, kind = st.twin(rng, prev)
                stats[kind] = stats.get(kind, 0) + 1
                twin_of = images[-1]["imgid"]
                prev = None
            else:
                scene, kind = st.random_scene(rng, size), None
                prev = scene
            fname = f"{n:06d}.png"
            st.render(scene, size).save(folder / fname, optimize=False, compress_level=1)
            images.append({
                "imgid": n, "filename": fname, "filepath": split, "split": split,
                "sentences": [{"raw": c} for c in st.captions(scene, rng)],
                "meta_hard_case": kind, "meta_twin_of": twin_of, **st.meta(scene),
            })
            n += 1
            made += 1
    doc = {"dataset": "finesearch-synth", "style": style, "seed": seed, "size": size, "images": images}
    tmp = out / "dataset.json.tmp"
    tmp.write_text(json.dumps(doc))
    tmp.replace(out / "dataset.json")
    return {"images": n, "style": style, **stats, "path": str(out / "dataset.json")}
