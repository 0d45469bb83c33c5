"""Prometheus metrics: request latency per route, per-stage latency, rerank sizes, errors, index size."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_LATENCY = Histogram("finesearch_request_seconds", "HTTP request latency", ["route", "method", "status"],
                            buckets=_BUCKETS, registry=REGISTRY)
STAGE_LATENCY = Histogram("finesearch_stage_seconds", "Search stage latency", ["stage"], buckets=_BUCKETS,
                          registry=REGISTRY)
CANDIDATES = Histogram("finesearch_candidates_reranked", "Candidates scored by the matcher per query",
                       buckets=(1, 10, 25, 50, 100, 200, 500, 1000), registry=REGISTRY)
BATCH_SIZE = Histogram("finesearch_model_batch_size", "Requests per micro-batch", ["stage"],
                       buckets=(1, 2, 4, 8, 16, 32, 64), registry=REGISTRY)
ERRORS = Counter("finesearch_errors_total", "Error responses by code", ["code"], registry=REGISTRY)
INDEX_SIZE = Gauge("finesearch_index_items", "Items per collection", ["collection"], registry=REGISTRY)


@dataclass
class Timer:
    """A search's stage timings (its `timing_ms`), each also observed in the stage-latency histogram."""

    marks: dict[str, float] = field(default_factory=dict)
    t: float = field(default_factory=time.perf_counter)
    start: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.marks[stage] = round((now - self.t) * 1000, 3)
        STAGE_LATENCY.labels(stage=stage).observe(now - self.t)
        self.t = now

    def done(self) -> dict[str, float]:
        self.marks["total"] = round((time.perf_counter() - self.start) * 1000, 3)
        return self.marks
