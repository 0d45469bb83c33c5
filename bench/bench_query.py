"""Query latency, throughput, memory and disk of `finesearch serve` through real HTTP (embedded store).

    python bench/bench_query.py --backbone tiny --sizes 1000,10000,100000
    python bench/bench_query.py --backbone ViT-B-32 --sizes 1000,10000,100000 --throughput-size 10000

The index holds N images and N captions. Their global vectors and raw token rows are synthetic (random
unit vectors: latency does not depend on their values), prepared by the served matcher as the indexer does
(indexer/preparation.py); the queries are real captions and real images of the synthetic demo data,
encoded by the served model. ViT-B-32 uses random weights (same compute as
pretrained). The server runs as its own process, the load generator (bench/loadgen.py) as another.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from common import RESULTS, table, write

from indexer.preparation import Preparer, prepared_root
from indexer.stores import IMAGES, TEXTS
from indexer.stores.edge import EdgeStore
from indexer.tokenbank import TokenBank
from training.model.backbone import Backbone
from training.model.bundle import load_bundle, save_bundle
from training.model.matcher import Matcher
from training.synth import generate
from training.train import matcher_config_for

REPO = Path(__file__).resolve().parents[1]
CACHE = RESULTS / "cache"
HERE = Path(__file__).resolve().parent


def bundle_for(name: str) -> Path:
    """The demo bundle for "tiny"; otherwise a random-weight bundle of that backbone with today's matcher
    defaults, rebuilt when the defaults changed since it was cached."""
    if name == "tiny":
        return REPO / "models" / "demo"
    out = CACHE / f"bundle-{name}-random"
    bb = Backbone.load(name, from_scratch=True, device="cpu")
    config = matcher_config_for(bb, {})
    saved = out / "config.json"
    if not saved.is_file() or json.loads(saved.read_text()).get("matcher") != config.to_dict():
        torch.manual_seed(0)
        save_bundle(out, bb, Matcher(config), include_backbone=True)
    return out


def index_dir(bundle: Path, name: str, n: int) -> Path:
    b = load_bundle(bundle, device="cpu")
    return CACHE / f"data-{name}-{n}-{Preparer(b.matcher, b.backbone.fingerprint).fingerprint[-8:]}"


def build_index(bundle: Path, n: int, out: Path) -> Path:
    if (out / "done").is_file():
        return out
    b = load_bundle(bundle, device="cpu")
    dim, fp = b.backbone.embed_dim, b.backbone.fingerprint
    m = b.matcher.config.num_patches
    preparer = Preparer(b.matcher, fp)
    store = EdgeStore(out / "qdrant")
    store.bind_backbone(fp, dim, b.backbone.describe())
    g = torch.Generator().manual_seed(n)
    for coll, length in ((IMAGES, m), (TEXTS, None)):
        store.ensure_collection(coll, dim)
        kind = "images" if length else "texts"
        bank = TokenBank(out / "tokens" / coll, dim, fp)
        prepared = TokenBank(prepared_root(bank.root), dim, preparer.fingerprint, extras_dim=preparer.extras_dim(kind))
        for lo in range(0, n, 5000):
            k = min(5000, n - lo)
            lens = np.full(k, m) if length else np.random.default_rng(lo).integers(6, 16, k)
            toks = torch.nn.functional.normalize(torch.randn(k, int(lens.max()), dim, generator=g), dim=-1).half()
            glob = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=-1)
            rows = bank.reserve(k)
            for j in range(0, k, 500):  # what the indexer does per batch: prepared features, then raw tokens
                p = preparer.prepare(kind, toks[j:j + 500].float(), lens[j:j + 500], glob[j:j + 500])
                prepared.append(p.tokens, p.lengths, rows=rows[j:j + 500], extras=p.extras)
            bank.append(toks, lens, rows=rows)
            glob = glob.numpy()
            ids = [f"{coll[0]}{lo + i}" for i in range(k)]
            payloads = [{"kind": coll[:-1], "row": int(r), "metadata": {}} | ({"text": f"synthetic caption {lo + i}"}
                        if coll == TEXTS else {}) for i, r in enumerate(rows)]
            store.upsert(coll, ids, glob, payloads)
    store.optimize()
    store.close()
    (out / "done").write_text("ok")
    return out


def queries() -> tuple[list[str], Path]:
    """The benchmarks' queries: the first caption of each of 50 synthetic test images, and the first image
    (generated once into the cache)."""
    synth = CACHE / "synth-queries"
    if not (synth / "dataset.json").is_file():
        generate(synth, seed=5, train=0, val=0, test=50)
    doc = json.loads((synth / "dataset.json").read_text())
    texts = [s["raw"] for im in doc["images"] for s in im["sentences"][:1]]
    return texts, synth / "images" / "test" / doc["images"][0]["filename"]


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, bundle: Path, data: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--model", str(bundle), "--data-dir", str(data),
             "--port", str(self.port), "--log-level", "warning"],
            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode() if self.proc.stderr else "server died")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not become ready")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(url: str, path: str, body: object, concurrency: int, requests: int, image: Path | None = None) -> dict:
    cmd = [sys.executable, str(HERE / "loadgen.py"), url, path, "--json", json.dumps(body), "--concurrency",
           str(concurrency), "--requests", str(requests), "--max-seconds", "120"]
    if image is not None:
        cmd += ["--image", str(image)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default="tiny", help="tiny (the demo bundle) or an open_clip name, e.g. ViT-B-32")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--throughput-size", type=int, default=None, help="index size for the concurrency sweep")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--candidates", type=int, default=100)
    a = ap.parse_args()
    bundle = bundle_for(a.backbone)
    texts, query_image = queries()
    t2i_bodies = lambda rerank: [{"text": t, "limit": 10, "candidates": a.candidates, "rerank": rerank}  # noqa: E731
                                 for t in texts]
    latency, memory, sweep = [], [], []
    for n in [int(x) for x in a.sizes.split(",")]:
        data = build_index(bundle, n, index_dir(bundle, a.backbone, n))
        srv = Server(bundle, data, {"FINESEARCH_BATCH_WINDOW_MS": "2"})
        try:
            for rerank in (False, True):
                r = load(srv.url, "/v1/search/images", t2i_bodies(rerank), 1, a.requests)
                latency.append({"items": n, "query": "text→image", "rerank": rerank, **_flat(r)})
                r = load(srv.url, "/v1/search/texts", {"limit": 10, "candidates": a.candidates,
                                                       "rerank": str(rerank).lower()}, 1, a.requests, query_image)
                latency.append({"items": n, "query": "image→text", "rerank": rerank, **_flat(r)})
            memory.append({"items": n, "rss_mb": srv.rss_mb(),
                           "qdrant_bytes_per_item": round(du(data / "qdrant") / (2 * n)),
                           "raw_bytes_per_image": round(du(data / "tokens" / IMAGES) / n),
                           "prepared_bytes_per_image": round(du(prepared_root(data / "tokens" / IMAGES)) / n),
                           "raw_bytes_per_text": round(du(data / "tokens" / TEXTS) / n),
                           "prepared_bytes_per_text": round(du(prepared_root(data / "tokens" / TEXTS)) / n)})
        finally:
            srv.stop()
    if a.throughput_size:
        data = build_index(bundle, a.throughput_size, index_dir(bundle, a.backbone, a.throughput_size))
        for window in ("2", "0"):
            srv = Server(bundle, data, {"FINESEARCH_BATCH_WINDOW_MS": window})
            try:
                for c in [int(x) for x in a.concurrency.split(",")]:
                    r = load(srv.url, "/v1/search/images", t2i_bodies(True), c, max(a.requests, 4 * c))
                    sweep.append({"items": a.throughput_size, "micro_batching": window != "0", "concurrency": c,
                                  "rps": r["rps"], "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"], "errors": r["errors"]})
            finally:
                srv.stop()
    cols = ["items", "query", "rerank", "p50_ms", "p95_ms", "encode", "recall", "gather", "rerank_ms", "errors"]
    print(f"backbone {a.backbone}, candidates {a.candidates}, concurrency 1\n" + table(latency, cols))
    print("\n" + table(memory, ["items", "rss_mb", "qdrant_bytes_per_item", "raw_bytes_per_image",
                                "prepared_bytes_per_image", "raw_bytes_per_text", "prepared_bytes_per_text"]))
    if sweep:
        print("\n" + table(sweep, ["items", "micro_batching", "concurrency", "rps", "p50_ms", "p95_ms", "errors"]))
    print("results:", write(f"query-{a.backbone}", {"args": vars(a), "latency": latency, "memory": memory,
                                                     "throughput": sweep}))


def _flat(r: dict) -> dict:
    s = r["server_ms"]
    return {"p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"], "errors": r["errors"], "encode": s.get("encode"),
            "recall": s.get("recall"), "gather": s.get("gather"), "rerank_ms": s.get("rerank")}


if __name__ == "__main__":
    main()
