"""How a search's scored candidates become the answer: ordered by the final score, cut at `min_score`,
paged, each score reported as the probability calibrated on validation (docs/api.md), and each item
described without anything that would reveal the server's files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.stores import IMAGES, Hit
from training.model.matcher import DIRECTIONS, KINDS

# per direction and kind (fused, global, fine): the (scale, bias) of the calibrated probability
Calibration = list[list[list[float]]]
Scored = list[tuple[Hit, float | None, float | None]]  # (hit, fused score, fine score); None without rerank


@dataclass
class SearchOptions:
    limit: int = 10
    candidates: int = 100
    rerank: bool = True
    min_score: float | None = None
    offset: int = 0
    filter: dict[str, Any] | None = None
    explain: bool = False


@dataclass
class Outcome:
    results: list[dict[str, Any]]
    timing_ms: dict[str, float]


def readable_scores(calibration: Calibration | None, direction: str, cosine: np.ndarray, fused: np.ndarray | None,
                    patch: np.ndarray | None) -> dict[str, np.ndarray | None]:
    """score, global_score and fine_score as calibrated probabilities, for all candidates at once; a matcher
    without calibration reports its raw scores."""
    if calibration is None:
        return {"score": fused if fused is not None else cosine, "global_score": cosine, "fine_score": patch,
                "cosine": cosine}

    def prob(x: np.ndarray, kind: str) -> np.ndarray:
        a, b = calibration[DIRECTIONS.index(direction)][KINDS.index(kind)]
        return 1.0 / (1.0 + np.exp(-np.clip(a * x + b, -60.0, 60.0)))

    glob = prob(cosine, "global")
    return {"score": prob(fused, "fused") if fused is not None else glob, "global_score": glob,
            "fine_score": None if patch is None else prob(patch, "fine"), "cosine": cosine}


def describe(hit: Hit | tuple[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    item_id, p = (hit.id, hit.payload) if isinstance(hit, Hit) else hit
    if kind == IMAGES:  # the routes add the links (service/api/links.py); a server path is never shown
        uri = p.get("uri")
        uri = uri if isinstance(uri, str) and uri.startswith(("http://", "https://")) else None
        return {"id": item_id, "uri": uri, "metadata": p.get("metadata") or {},
                "width": p.get("width"), "height": p.get("height")}
    return {"id": item_id, "text": p.get("text"), "image_id": p.get("image_id"),
            "metadata": p.get("metadata") or {}}


def page_of(scored: Scored, offset: int, limit: int, min_score: float | None, kind: str,
            calibration: Calibration | None) -> tuple[list[dict[str, Any]], list[int]]:
    """Sort by the final score (fused when reranked, else global), cut at min_score, then page; with the
    page's indices into `scored`."""
    if not scored:
        return [], []
    direction = "t2i" if kind == IMAGES else "i2t"
    cosine = np.array([h.score for h, _, _ in scored], dtype=np.float64)
    reranked = scored[0][1] is not None
    fused = np.array([f for _, f, _ in scored], dtype=np.float64) if reranked else None
    patch = np.array([p for _, _, p in scored], dtype=np.float64) if reranked else None
    scores = readable_scores(calibration, direction, cosine, fused, patch)
    order = np.argsort(-(fused if fused is not None else cosine), kind="stable")
    if min_score is not None:
        order = order[scores["score"][order] >= min_score]
    page = order[offset: offset + limit].tolist()
    return [describe(scored[j][0], kind) | {"rank": offset + i + 1} |
            {k: (None if v is None else round(float(v[j]), 6)) for k, v in scores.items()}
            for i, j in enumerate(page)], page
