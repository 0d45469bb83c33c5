"""A second, differently drawn compositional style: patterned icons in the cells of a 2×2 grid.

Nothing is shared with the "shapes" style but the idea: other objects (stars, crosses,
rings, diamonds, hexagons), other colour names, a pattern attribute (striped or plain)
instead of size, positions as grid corners and as vertical, horizontal or diagonal
relations, tinted and noisy backgrounds, and other caption templates. Twins swap the
colours, the patterns or the cells of two objects. A matcher that gains only on the
"shapes" style has learned that generator, not word–region binding.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "crimson": (190, 20, 60), "teal": (0, 128, 128), "navy": (20, 30, 120),
    "gold": (230, 180, 0), "magenta": (220, 0, 200), "lime": (120, 220, 30),
}
SHAPES = ("star", "cross", "ring", "diamond", "hexagon")
PATTERNS = ("striped", "plain")
CELLS = ("top left", "top right", "bottom left", "bottom right")  # row-major 2×2
NUMBERS = {2: "two", 3: "three"}


@dataclass(frozen=True)
class Icon:
    shape: str
    colour: str
    pattern: str
    cell: int  # index into CELLS

    def words(self, with_pattern: bool = True) -> str:
        return f"{self.pattern} {self.colour} {self.shape}" if with_pattern else f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class GridScene:
    objects: tuple[Icon, ...]
    background: tuple[int, int, int]
    noise_seed: int
    jitter: tuple[tuple[int, int], ...]

    @property
    def layout(self) -> str:
        return "grid"


def random_scene(rng: random.Random, size: int) -> GridScene:
    n = rng.choice((2, 2, 3))
    cells = rng.sample(range(4), n)
    objs: list[Icon] = []
    while len(objs) < n:
        o = Icon(rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(PATTERNS), cells[len(objs)])
        if all((o.shape, o.colour) != (p.shape, p.colour) for p in objs):
            objs.append(o)
    bg = tuple(rng.randint(200, 250) for _ in range(3))
    j = max(1, size // 32)
    return GridScene(tuple(objs), bg, rng.randrange(2**31),  # type: ignore[arg-type]
                     tuple((rng.randint(-j, j), rng.randint(-j, j)) for _ in objs))


def twin(rng: random.Random, scene: GridScene) -> tuple[GridScene, str]:
    """Same icons, but two of them swap colours, patterns or cells."""
    objs = list(scene.objects)
    i, k = rng.sample(range(len(objs)), 2)
    a, b = objs[i], objs[k]
    roll = rng.random()
    if roll < 0.4 and a.colour != b.colour:
        objs[i], objs[k] = replace(a, colour=b.colour), replace(b, colour=a.colour)
        kind = "colour-swap"
    elif roll < 0.6 and a.pattern != b.pattern:
        objs[i], objs[k] = replace(a, pattern=b.pattern), replace(b, pattern=a.pattern)
        kind = "pattern-swap"
    else:
        objs[i], objs[k] = replace(a, cell=b.cell), replace(b, cell=a.cell)
        kind = "position-swap"
    return replace(scene, objects=tuple(objs)), kind


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.sin(math.pi * k / 5),
                 cy - (r if k % 2 == 0 else r * 0.45) * math.cos(math.pi * k / 5)) for k in range(10)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "hexagon":
        return [(cx + r * math.cos(math.pi * k / 3), cy + r * math.sin(math.pi * k / 3)) for k in range(6)]
    w = r * 0.38  # cross
    return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
            (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
            (cx - r, cy - w), (cx - w, cy - w)]


def render(scene: GridScene, size: int) -> Image.Image:
    noise = random.Random(scene.noise_seed)
    img = Image.new("RGB", (size, size), scene.background)
    px = img.load()
    for _ in range(size * size // 6):  # sparse speckle: the background is not a flat colour
        x, y = noise.randrange(size), noise.randrange(size)
        px[x, y] = tuple(max(0, c - noise.randint(15, 40)) for c in scene.background)  # type: ignore[index]
    half = size / 2
    for obj, (jx, jy) in zip(scene.objects, scene.jitter, strict=True):
        row, col = divmod(obj.cell, 2)
        cx, cy = half * (col + 0.5) + jx, half * (row + 0.5) + jy
        r = half * 0.4
        colour = COLOURS[obj.colour]
        layer = Image.new("L", (size, size), 0)
        ImageDraw.Draw(layer).ellipse((cx - r, cy - r, cx + r, cy + r), outline=255, width=max(2, size // 16)) \
            if obj.shape == "ring" else ImageDraw.Draw(layer).polygon(_outline(obj.shape, cx, cy, r), fill=255)
        fill = Image.new("RGB", (size, size), colour)
        if obj.pattern == "striped":  # dark diagonal bands every few pixels
            dark = tuple(int(c * 0.35) for c in colour)
            d = ImageDraw.Draw(fill)
            step = max(3, size // 16)
            for off in range(-size, size, step * 2):
                d.polygon([(off, 0), (off + step, 0), (off + step + size, size), (off + size, size)], fill=dark)
        img.paste(fill, (0, 0), layer)
    return img


def _the(icon: Icon, pattern: bool) -> str:
    return f"the {icon.words(pattern)}"


def _relation(a: Icon, b: Icon) -> str:
    """Where a is relative to b, in words."""
    ra, ca = divmod(a.cell, 2)
    rb, cb = divmod(b.cell, 2)
    vertical = "above" if ra < rb else "below" if ra > rb else ""
    horizontal = "to the left of" if ca < cb else "to the right of" if ca > cb else ""
    if vertical and horizontal:
        return f"diagonally {vertical} and {horizontal.removeprefix('to the ')}"
    return vertical or horizontal


def captions(scene: GridScene, rng: random.Random) -> list[str]:
    objs = list(scene.objects)
    a, b = rng.sample(objs, 2)
    by_cell = sorted(objs, key=lambda o: o.cell)
    return [
        f"{_the(a, True)} is {_relation(a, b)} {_the(b, True)}",
        " and ".join(f"{_the(o, False)} in the {CELLS[o.cell]} corner" for o in by_cell),
        f"{NUMBERS[len(objs)]} icons: " + ", ".join(o.words(True) for o in by_cell),
        f"a {a.shape} that is {a.pattern} and {a.colour}, {_relation(a, b)} a {b.colour} {b.shape}",
        f"in the {CELLS[b.cell]} corner there is a {b.words(rng.random() < 0.5)}",
    ]


def meta(scene: GridScene) -> dict[str, Any]:
    return {"meta_objects": [o.__dict__ | {"cell_name": CELLS[o.cell]} for o in scene.objects],
            "meta_layout": "grid"}
