"""Which synthetic captions are true of which images: the ceiling of the t2i task, and what a ranker gets wrong.

Many captions fit several images ("a red circle left of a blue square" fits every image with such a pair),
so no ranker can reach t2i R@1 = 100. This reads the scenes that `finesearch synth` records in
`dataset.json` (meta_objects, meta_layout), decides for every caption which images it is true of, and
reports:

* the expected t2i R@1 of a perfect ranker that orders the images a caption fits at random (1/m each);
* with `--ranking FILE` (a ranker's t2i top-1 per caption, written by `bench/eval_errors.py`), what kind of
  mistake each wrong top-1 is: the caption is true of it too (not a mistake), a twin, an order, size or
  binding error, or a missing object or colour.

Nothing in the product uses this: it knows the generator's templates, which a model must never see.

    python bench/synth_truth.py data/synth/dataset.json --split test
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
Scene = dict[str, Any]
Check = Callable[[Scene, set[str]], bool]  # a scene and the constraints to ignore → true?

# ---------------------------------------------------------------------------------------------- shapes style
_C = "red|green|blue|yellow|purple|orange"
_S = "circle|square|triangle"
_OBJ = rf"an? (?:(small|large) )?({_C}) ({_S})"


def _match(o: Obj, want: tuple[str | None, str, str], relax: set[str]) -> bool:
    size, colour, shape = want
    if "binding" in relax:
        return True  # checked as bags of colours and shapes instead
    return o["colour"] == colour and o["shape"] == shape and (size is None or "size" in relax or o["size"] == size)


def _bags_ok(objs: list[Obj], wants: list[tuple[str | None, str, str]], relax: set[str]) -> bool:
    colours, shapes = Counter(o["colour"] for o in objs), Counter(o["shape"] for o in objs)
    need_c, need_s = Counter(w[1] for w in wants), Counter(w[2] for w in wants)
    return all(colours[c] >= n for c, n in need_c.items()) and all(shapes[s] >= n for s, n in need_s.items())


def _chain(scene: Scene, wants: list[tuple[str | None, str, str]], axis: str, relax: set[str]) -> bool:
    """wants[0] before wants[1] before … along the axis ('row' = left→right, 'column' = top→bottom)."""
    objs = scene["meta_objects"]
    if "binding" in relax and not _bags_ok(objs, wants, relax):
        return False
    ordered = "order" not in relax

    def place(k: int, start: int, used: set[int]) -> bool:
        if k == len(wants):
            return True
        for i in range(start if ordered else 0, len(objs)):
            if i not in used and _match(objs[i], wants[k], relax) and place(k + 1, i + 1, used | {i}):
                return True
        return False

    return (scene["meta_layout"] == axis or not ordered) and place(0, 0, set())


def shapes_check(caption: str) -> Check | None:
    c = caption.strip().lower()
    m = re.fullmatch(r"(\d) shapes: (.*)", c)
    if m:
        wants = [(s, col, sh) for s, col, sh in re.findall(_OBJ, m.group(2))]
        return lambda sc, rx: len(sc["meta_objects"]) == int(m.group(1)) and \
            _chain(sc, wants, sc["meta_layout"], rx | {"order"})
    m = re.fullmatch(rf"({_OBJ}) (on the left|at the top) and ({_OBJ}) (on the right|at the bottom)", c)
    if m:
        a, b = (m.group(2), m.group(3), m.group(4)), (m.group(7), m.group(8), m.group(9))
        axis = "row" if m.group(5) == "on the left" else "column"

        def ends(sc: Scene, rx: set[str]) -> bool:
            objs = sc["meta_objects"]
            if "order" in rx or "binding" in rx:
                return _chain(sc, [a, b], axis, rx)
            return sc["meta_layout"] == axis and _match(objs[0], a, rx) and _match(objs[-1], b, rx)

        return ends
    parts = re.split(r" (left of|right of|above|below) ", c)
    if len(parts) >= 3:
        objs = [re.fullmatch(_OBJ, p) for p in parts[0::2]]
        rels = set(parts[1::2])
        if all(objs) and len(rels) == 1:
            wants = [(o.group(1), o.group(2), o.group(3)) for o in objs if o]
            rel = rels.pop()
            if rel in ("right of", "below"):
                wants = wants[::-1]
            axis = "row" if rel in ("left of", "right of") else "column"
            return lambda sc, rx: _chain(sc, wants, axis, rx)
    return None


# ------------------------------------------------------------------------------------------------ grid style
_GC = "crimson|teal|navy|gold|magenta|lime"
_GS = "star|cross|ring|diamond|hexagon"
_CELLS = ("top left", "top right", "bottom left", "bottom right")
_REL = (r"above|below|to the left of|to the right of|diagonally (?:above|below) and (?:left|right) of")


def _rel_ok(a: Obj, b: Obj, rel: str) -> bool:
    ra, ca = divmod(a["cell"], 2)
    rb, cb = divmod(b["cell"], 2)
    v = "above" if ra < rb else "below" if ra > rb else ""
    h = "left" if ca < cb else "right" if ca > cb else ""
    if rel.startswith("diagonally"):
        return bool(v and h) and rel == f"diagonally {v} and {h} of"
    if rel in ("above", "below"):
        return v == rel and not h
    return (not v) and rel == f"to the {h} of"


def _icon(o: Obj, pattern: str | None, colour: str, shape: str, relax: set[str]) -> bool:
    return "binding" in relax or (o["colour"] == colour and o["shape"] == shape and
                                  (pattern is None or "size" in relax or o["pattern"] == pattern))


def _pair(sc: Scene, a: tuple[str | None, str, str], b: tuple[str | None, str, str], rel: str | None,
          rx: set[str]) -> bool:
    objs = sc["meta_objects"]
    if "binding" in rx and not _bags_ok(objs, [a, b], rx):
        return False
    return any(i != k and _icon(objs[i], *a, rx) and _icon(objs[k], *b, rx) and
               (rel is None or "order" in rx or _rel_ok(objs[i], objs[k], rel))
               for i in range(len(objs)) for k in range(len(objs)))


def grid_check(caption: str) -> Check | None:
    c = caption.strip().lower()
    m = re.fullmatch(rf"the (striped|plain) ({_GC}) ({_GS}) is ({_REL}) the (striped|plain) ({_GC}) ({_GS})", c)
    if m:
        return lambda sc, rx: _pair(sc, m.group(1, 2, 3), m.group(5, 6, 7), m.group(4), rx)
    m = re.fullmatch(rf"an? ({_GS}) that is (striped|plain) and ({_GC}), ({_REL}) an? ({_GC}) ({_GS})", c)
    if m:
        return lambda sc, rx: _pair(sc, (m.group(2), m.group(3), m.group(1)), (None, m.group(5), m.group(6)),
                                    m.group(4), rx)
    m = re.fullmatch(rf"in the ({'|'.join(_CELLS)}) corner there is an? (?:(striped|plain) )?({_GC}) ({_GS})", c)
    if m:
        cell = _CELLS.index(m.group(1))
        return lambda sc, rx: any(_icon(o, m.group(2), m.group(3), m.group(4), rx) and
                                  ("order" in rx or o["cell"] == cell) for o in sc["meta_objects"])
    m = re.fullmatch(r"(two|three) icons: (.*)", c)
    if m:
        wants = [(p, col, sh) for p, col, sh in re.findall(rf"(striped|plain) ({_GC}) ({_GS})", m.group(2))]
        n = {"two": 2, "three": 3}[m.group(1)]
        return lambda sc, rx: len(sc["meta_objects"]) == n and all(
            any(_icon(o, *w, rx) for o in sc["meta_objects"]) for w in wants) and \
            ("binding" not in rx or _bags_ok(sc["meta_objects"], wants, rx))
    parts = re.findall(rf"the ({_GC}) ({_GS}) in the ({'|'.join(_CELLS)}) corner", c)
    if parts:
        return lambda sc, rx: ("binding" not in rx or _bags_ok(sc["meta_objects"], [(None, a, b) for a, b, _ in parts],
                                                                rx)) and all(
            any(_icon(o, None, col, sh, rx) and ("order" in rx or o["cell"] == _CELLS.index(cell))
                for o in sc["meta_objects"]) for col, sh, cell in parts)
    return None


# ----------------------------------------------------------------------------------------------------- report
def checks_for(doc: dict[str, Any]) -> Callable[[str], Check | None]:
    return grid_check if doc.get("style") == "grid" else shapes_check


def truth_table(doc: dict[str, Any], split: str) -> tuple[list[Scene], list[str], list[int], list[list[int]]]:
    """(scenes, captions, caption → own image, caption → every image of the split it is true of)."""
    scenes = [im for im in doc["images"] if im["split"] == split]
    check = checks_for(doc)
    caps, own, fits = [], [], []
    for k, sc in enumerate(scenes):
        for s in sc["sentences"]:
            fn = check(s["raw"])
            if fn is None:
                raise ValueError(f"no parser for caption {s['raw']!r}")
            caps.append(s["raw"])
            own.append(k)
            fits.append([j for j, other in enumerate(scenes) if fn(other, set())])
    return scenes, caps, own, fits


def mistake(scenes: list[Scene], check: Check, gt: int, top: int) -> str:
    other = scenes[top]
    if check(other, set()):
        return "also true (not a mistake)"
    if scenes[gt].get("meta_twin_of") == other["imgid"] or other.get("meta_twin_of") == scenes[gt]["imgid"]:
        return "twin"
    for relax, name in (({"order"}, "order"), ({"size"}, "size (pattern)"), ({"binding", "order"}, "binding")):
        if check(other, relax):
            return name
    return "missing object or colour"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--ranking", type=Path, help="JSON {caption index: top-1 image index} of a ranker")
    args = ap.parse_args()
    doc = json.loads(args.dataset.read_text())
    scenes, caps, own, fits = truth_table(doc, args.split)
    for t, f in enumerate(fits):
        assert own[t] in f, f"caption {caps[t]!r} is not true of its own image"
    ceiling = 100.0 * sum(1.0 / len(f) for f in fits) / len(fits)
    out: dict[str, Any] = {"split": args.split, "images": len(scenes), "captions": len(caps),
                           "t2i_r1_ceiling": round(ceiling, 2),
                           "captions_true_of_one_image": round(100.0 * sum(len(f) == 1 for f in fits) / len(fits), 2)}
    if args.ranking:
        top = {int(k): v for k, v in json.loads(args.ranking.read_text()).items()}
        check = checks_for(doc)
        kinds = Counter(mistake(scenes, check(caps[t]), own[t], j) for t, j in top.items() if j != own[t])  # type: ignore[arg-type]
        out["top1_mistakes"] = dict(kinds.most_common())
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
