"""What a rerank adds to a search, piece by piece, in-process on a bench_query index (no HTTP).

    python bench/bench_serving_parts.py --backbone tiny --items 10000
    python bench/bench_serving_parts.py --backbone ViT-B-32 --items 10000

bench_query.py measures the whole answer through HTTP; this splits a text→image search into the pieces a
rerank adds, each timed alone on one thread with different candidates every query (as a live server reads
them, not the same hot rows): recalling 100 candidates with their payloads instead of the page's 10, reading
their prepared features from the bank, preparing the query caption (in its encoding call), and the
interaction over the 100. Their sum is the least a rerank can add on this machine, whatever the glue
around it; the engine's own searches, rerank off and on in both directions, are timed last.
`--engine-only` times those alone, so the same command measures another checkout's serving code:

    PYTHONPATH=<worktree of another commit> python bench/bench_serving_parts.py --engine-only --items 10000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_query import build_index, bundle_for, index_dir, queries
from common import table, write

from indexer.stores import IMAGES
from service.config import Settings
from service.engine import Engine
from service.results import SearchOptions
from service.scoring import RerankJob


def timed(fn: Callable[[int], Any], repeats: int) -> float:
    """Median ms of fn(i) over `repeats` calls, after 10 untimed ones (on a GPU, each waits for its kernels)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    ms = []
    for i in range(repeats + 10):
        t = time.perf_counter()
        fn(i)
        sync()
        ms.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(ms[10:]), 3)


def parts(engine: Engine, texts: list[str], repeats: int, candidates: int) -> dict[str, float]:
    """Each piece alone, on this thread (one torch thread, as the model thread runs)."""
    s, store = engine.scorer, engine.store
    queries = s.encode_text_queries([(t, True) for t in texts])
    vecs = [q.globals.float().cpu().numpy() for q in queries]
    bank = engine.indexer.serving_bank(IMAGES)
    rows = bank.live_rows()
    g = torch.Generator().manual_seed(0)
    picks = [rows[torch.randperm(len(rows), generator=g)[:candidates].numpy()] for _ in range(64)]
    fetched = [bank.fetch(p) for p in picks]
    zeros = torch.zeros(candidates)
    n = len(texts)
    return {
        "encode caption": timed(lambda i: s.encode_texts([texts[i % n]]), repeats),
        "recall 10 (rerank off)": timed(lambda i: store.search(IMAGES, vecs[i % n], 10, None, 0, False), repeats),
        f"recall {candidates}": timed(lambda i: store.search(IMAGES, vecs[i % n], candidates, None, 0, False),
                                      repeats),
        f"gather {candidates}": timed(lambda i: bank.fetch(picks[i % 64]), repeats),
        "prepare caption": timed(lambda i: s.prepare_queries("t2i", [queries[i % n]]), repeats),
        f"interaction over {candidates}": timed(lambda i: s.rerank([RerankJob(
            "t2i", queries[i % n], fetched[i % 64].tokens, fetched[i % 64].mask, None, zeros)]), repeats),
    }


def engine_totals(engine: Engine, texts: list[str], image: bytes, repeats: int, candidates: int
                  ) -> dict[str, float]:
    """The engine's own searches (its timer's total): text→image and image→text (an uploaded image), rerank
    off and on, the four in turn, `repeats` of each after 5 untimed rounds."""
    kinds = [(d, on) for d in ("text→image", "image→text") for on in (False, True)]

    async def run() -> dict[str, float]:
        out: dict[str, list[float]] = {}
        for i in range(4 * (repeats + 5)):
            direction, on = kinds[i % 4]
            opts = SearchOptions(10, candidates, on)
            res = await (engine.search_images(texts[i % len(texts)], opts) if direction == "text→image"
                         else engine.search_texts(opts, image=image))
            if i >= 20:
                out.setdefault(f"engine {direction}, rerank {'on' if on else 'off'}", []).append(res.timing_ms["total"])
        return {k: round(statistics.median(v), 3) for k, v in out.items()}
    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--engine-only", action="store_true",
                    help="only the engine's searches: runs against another checkout's serving code too "
                         "(PYTHONPATH=<checkout>), for an A/B of it")
    a = ap.parse_args()
    bundle = bundle_for(a.backbone)
    data = build_index(bundle, a.items, index_dir(bundle, a.backbone, a.items))
    texts, image = queries()
    engine = Engine(Settings(model=Path(bundle), data_dir=data))
    got: dict[str, float] = {}
    try:
        torch.set_num_threads(1)
        if not a.engine_only:
            with torch.inference_mode():
                got = parts(engine, texts, a.repeats, a.candidates)
        got |= engine_totals(engine, texts, image.read_bytes(), a.repeats // 2, a.candidates)
    finally:
        engine.close()
    rows = [{"piece": name, "ms": v} for name, v in got.items()]
    k, floor = a.candidates, None
    if not a.engine_only:
        floor = (got[f"recall {k}"] - got["recall 10 (rerank off)"] + got[f"gather {k}"] + got["prepare caption"]
                 + got[f"interaction over {k}"])
        rows.append({"piece": "least a rerank adds (recall difference + gather + preparation + interaction)",
                     "ms": round(floor, 3)})
    for d in ("text→image", "image→text"):
        on, off = got[f"engine {d}, rerank on"], got[f"engine {d}, rerank off"]
        rows.append({"piece": f"engine {d}: on − off (on / off)", "ms": f"{on - off:.3f} ({on / off:.2f}×)"})
    device = str(engine.device) + (f" ({torch.cuda.get_device_name(0)})" if engine.device.type == "cuda" else "")
    print(f"backbone {a.backbone}, {a.items} items, {k} candidates, one torch thread, {device}\n"
          + table(rows, ["piece", "ms"]))
    print("results:", write(f"serving-parts-{a.backbone}", {"args": vars(a), "parts": got, "floor_ms": floor}))


if __name__ == "__main__":
    main()
