"""Embedded Qdrant Edge: query time at N global vectors (default 100k, d=512), with and without a filter.

    python bench/bench_qdrant.py [--n 100000] [--dim 512] [--queries 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from common import summary, table, write

from indexer.stores.edge import EdgeStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--limit", type=int, default=100)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = EdgeStore(tmp)
        store.ensure_collection("images", a.dim, {"metadata.group": "integer"})
        t0 = time.perf_counter()
        for lo in range(0, a.n, 5000):
            n = min(5000, a.n - lo)
            store.upsert("images", [f"i{lo + k}" for k in range(n)], rng.normal(size=(n, a.dim)).astype(np.float32),
                         [{"kind": "image", "row": lo + k, "metadata": {"group": (lo + k) % 10}} for k in range(n)])
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.optimize()
        opt_s = time.perf_counter() - t0
        queries = rng.normal(size=(a.queries, a.dim)).astype(np.float32)
        rows = []
        for label, flt in (("no filter", None), ("filter 1/10", {"group": 3})):
            ms = []
            for q in queries:
                t = time.perf_counter()
                store.search("images", q, a.limit, flt)
                ms.append((time.perf_counter() - t) * 1000)
            rows.append({"case": label, "vectors": a.n, "limit": a.limit, **summary(ms)})
        store.close()
    print(f"loaded {a.n} vectors in {load_s:.1f} s, HNSW optimise {opt_s:.1f} s")
    print(table(rows, ["case", "vectors", "limit", "p50_ms", "p95_ms", "queries"]))
    print("results:", write("qdrant", {"args": vars(a), "load_s": load_s, "optimize_s": opt_s, "rows": rows}))


if __name__ == "__main__":
    main()
