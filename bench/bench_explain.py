"""What `explain` costs: the explain stage of a search, per returned result, both directions.

    python bench/bench_explain.py --backbone tiny --items 10000     # the index bench_query.py built

The engine runs in-process on the synthetic index of bench_query.py (build it with that script first); the
figures are the server's own `timing_ms.explain` medians for pages of 1, 10 and 50 results at 100 candidates.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from bench_query import CACHE, bundle_for, index_dir
from common import table, write

from service.config import Settings
from service.engine import Engine
from service.results import SearchOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args()
    bundle = bundle_for(a.backbone)
    data = index_dir(bundle, a.backbone, a.items)
    if not (data / "done").is_file():
        raise SystemExit(f"no index at {data}: run bench_query.py --backbone {a.backbone} --sizes {a.items} first")
    engine = Engine(Settings(model=bundle, data_dir=data))
    query_image = sorted((CACHE / "synth-queries" / "images" / "test").glob("*.png"))[0].read_bytes()
    rows = []

    async def run() -> None:
        for limit in (1, 10, 50):
            for direction in ("text→image", "image→text"):
                ms = []
                for k in range(a.repeats + 3):
                    opts = SearchOptions(limit=limit, candidates=100, explain=True)
                    if direction == "text→image":
                        out = await engine.search_images(f"a small red circle left of a large blue square {k}", opts)
                    else:
                        out = await engine.search_texts(opts, image=query_image)
                    if k >= 3:
                        ms.append(out.timing_ms["explain"])
                p50 = statistics.median(ms)
                rows.append({"query": direction, "results": limit, "explain_p50_ms": round(p50, 3),
                             "per_result_ms": round(p50 / limit, 3)})
                print(rows[-1], flush=True)

    try:
        asyncio.run(run())
    finally:
        engine.close()
    print(table(rows, ["query", "results", "explain_p50_ms", "per_result_ms"]))
    print("results:", write(f"explain-{a.backbone}", {"args": vars(a), "rows": rows}))


if __name__ == "__main__":
    main()
