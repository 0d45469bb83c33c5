from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...errors import ApiError
from ...metrics import REGISTRY
from ..deps import EngineDep, Read

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The model is loaded and the store answers",
            responses={503: {"description": "not ready"}})
async def readyz(request: Request) -> dict[str, str]:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ApiError(503, "the model is still loading", "not_ready")
    if not await asyncio.to_thread(engine.ready):
        raise ApiError(503, "the vector store does not answer", "not_ready")
    return {"status": "ready", "model": engine.bundle.id}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/stats", dependencies=[Read], summary="Index sizes, model and device")
async def stats(engine: EngineDep) -> dict[str, Any]:
    return await asyncio.to_thread(engine.stats)
