"""Maintenance through the running server, which owns the embedded store (one process per data directory)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from ...schemas import ErrorResponse
from ..deps import EngineDep, Write

router = APIRouter(prefix="/v1/admin", tags=["operations"],
                   responses={c: {"model": ErrorResponse} for c in (401, 503)})


@router.post("/compact", dependencies=[Write], summary="Reclaim token-bank space; sweep unreferenced blobs")
async def compact(engine: EngineDep) -> dict[str, Any]:
    """What `finesearch index compact` does, run by the server: drop tombstoned rows and orphans (rows no
    point references, left by a crash between the feature write and the upsert), remove unreferenced
    blobs. Writes wait while it runs; searches go on."""
    result = await asyncio.to_thread(engine.indexer.compact)
    await asyncio.to_thread(engine.catalog.refresh_gauges)
    return {"compacted": result}
