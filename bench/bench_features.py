"""Fetching 100 candidates' prepared features: the token bank against a Qdrant multivector.

    python bench/bench_features.py [--candidates 100] [--items 5000] [--repeats 50]

Per backbone shape (tiny: 64 patches × 128-d; ViT-B-32: 49 × 512; captions: 12 words), three ways to get
the features of `candidates` points into one array, each the median of `repeats` fetches:

* token bank: `TokenBank.fetch` (memory-mapped fp16 file, what the service does in embedded mode);
* qdrant-client `:memory:`: `query_points` with the named multivector in the same call as the candidates
  (qdrant-client's own emulation of a server; its search cost is Python's, so the figure is its fetch and
  conversion, not a server's);
* gRPC decode: the client-side half of a gRPC search with the multivector, which no network or server speed
  removes: parsing the serialised response of `candidates` points and turning it into arrays, as
  qdrant-client does. No Qdrant server runs on the benchmark machine; with one, add its search time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import summary, table, write
from qdrant_client import QdrantClient, grpc, models
from qdrant_client.conversions.conversion import GrpcToRest

from indexer.tokenbank import TokenBank

SHAPES = {"tiny images": (64, 128), "ViT-B-32 images": (49, 512), "ViT-B-32 captions": (12, 512)}


def timed(fn, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def bank_fetch(tmp: Path, tokens: np.ndarray, k: int, repeats: int) -> list[float]:
    n, length, d = tokens.shape
    bank = TokenBank(tmp / "bank", d, "bench")
    rows = bank.append(tokens, np.full(n, length))
    rng = np.random.default_rng(0)
    return timed(lambda: bank.fetch(rng.choice(rows, k, replace=False)), repeats)


def memory_fetch(tokens: np.ndarray, k: int, repeats: int) -> list[float]:
    n, length, d = tokens.shape
    client = QdrantClient(":memory:")
    client.create_collection("c", vectors_config={
        "global": models.VectorParams(size=d, distance=models.Distance.COSINE),
        "tokens": models.VectorParams(size=d, distance=models.Distance.COSINE, on_disk=True,
                                      datatype=models.Datatype.FLOAT16, hnsw_config=models.HnswConfigDiff(m=0),
                                      multivector_config=models.MultiVectorConfig(
                                          comparator=models.MultiVectorComparator.MAX_SIM))})
    rng = np.random.default_rng(1)
    glob = rng.standard_normal((n, d)).astype(np.float32)
    for lo in range(0, n, 256):
        client.upsert("c", [models.PointStruct(id=i, vector={"global": glob[i].tolist(), "tokens": tokens[i].tolist()})
                            for i in range(lo, min(lo + 256, n))])

    def fetch() -> np.ndarray:
        q = rng.standard_normal(d).astype(np.float32).tolist()
        res = client.query_points("c", query=q, using="global", limit=k, with_vectors=["tokens"]).points
        return np.stack([np.asarray(p.vector["tokens"], dtype=np.float16) for p in res])  # type: ignore[index]

    return timed(fetch, repeats)


def grpc_decode(tokens: np.ndarray, k: int, repeats: int) -> list[float]:
    _, length, d = tokens.shape
    points = []
    for i in range(k):
        multi = grpc.MultiDenseVector(vectors=[grpc.DenseVector(data=row.tolist()) for row in tokens[i]])
        vec = grpc.VectorsOutput(vectors=grpc.NamedVectorsOutput(vectors={"tokens": grpc.VectorOutput(
            multi_dense=multi)}))
        points.append(grpc.ScoredPoint(id=grpc.PointId(num=i), score=0.5, version=1, vectors=vec))
    wire = grpc.QueryResponse(result=points).SerializeToString()

    def decode() -> np.ndarray:
        msg = grpc.QueryResponse()
        msg.ParseFromString(wire)
        pts = [GrpcToRest.convert_scored_point(p) for p in msg.result]
        return np.stack([np.asarray(p.vector["tokens"], dtype=np.float16) for p in pts])  # type: ignore[index]

    out = decode()
    assert out.shape == (k, length, d)
    return timed(decode, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=50)
    a = ap.parse_args()
    rows = []
    for name, (length, d) in SHAPES.items():
        rng = np.random.default_rng(2)
        tokens = rng.standard_normal((a.items, length, d)).astype(np.float16)
        with tempfile.TemporaryDirectory() as tmp:
            runs = {"token bank (memmap)": bank_fetch(Path(tmp), tokens, a.candidates, a.repeats),
                    "qdrant-client :memory:": memory_fetch(tokens[:2000], a.candidates, max(5, a.repeats // 5)),
                    "gRPC decode (client side)": grpc_decode(tokens, a.candidates, a.repeats)}
            for way, ms in runs.items():
                s = summary(ms)
                rows.append({"features": name, "fetch": way, "values": a.candidates * length * d, **s})
                print(f"{name:18s} {way:26s} p50 {s['p50_ms']:.2f} ms", flush=True)
    print(table(rows, ["features", "fetch", "values", "p50_ms", "p95_ms"]))
    print("results:", write("features", {"args": vars(a), "rows": rows}))


if __name__ == "__main__":
    main()
