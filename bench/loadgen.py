"""Load generator, run as its own process: N requests at concurrency C against one endpoint, bounded in time.

    python bench/loadgen.py URL PATH --json BODY | --image FILE  [--concurrency 4] [--requests 200] [--max-seconds 60]

Prints one JSON line: requests/s, latency p50/p95 (ms), errors, and the server's own timing_ms medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import httpx


def _pct(v: list[float], q: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] if s else float("nan")


async def run(a: argparse.Namespace) -> dict:
    bodies = json.loads(a.json) if a.json else None
    image = Path(a.image).read_bytes() if a.image else None
    lat: list[float] = []
    stages: dict[str, list[float]] = {}
    errors = 0
    sent = 0
    deadline = time.monotonic() + a.max_seconds
    limits = httpx.Limits(max_connections=a.concurrency, max_keepalive_connections=a.concurrency)

    async with httpx.AsyncClient(base_url=a.url, timeout=60, limits=limits) as client:
        async def worker() -> None:
            nonlocal errors, sent
            while sent < a.requests and time.monotonic() < deadline:
                k = sent
                sent += 1
                t = time.perf_counter()
                if image is not None:
                    r = await client.post(a.path, files={"image": ("q.png", image, "image/png")},
                                          data={k: str(v) for k, v in (bodies or {}).items()})
                else:
                    body = bodies[k % len(bodies)] if isinstance(bodies, list) else bodies
                    r = await client.post(a.path, json=body)
                lat.append((time.perf_counter() - t) * 1000)
                if r.status_code != 200:
                    errors += 1
                    continue
                for key, v in r.json().get("timing_ms", {}).items():
                    if v is not None:  # stages that did not run (explain, unless asked)
                        stages.setdefault(key, []).append(v)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(a.concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": a.concurrency, "requests": len(lat), "errors": errors, "rps": round(len(lat) / wall, 2),
            "p50_ms": round(statistics.median(lat), 2), "p95_ms": round(_pct(lat, 95), 2),
            "server_ms": {k: round(statistics.median(v), 3) for k, v in stages.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url")
    ap.add_argument("path")
    ap.add_argument("--json", default=None, help="a JSON body, or a JSON list of bodies used in turn")
    ap.add_argument("--image", default=None, help="send this file as multipart 'image' (JSON body → form fields)")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=60)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(run(a))))


if __name__ == "__main__":
    main()
