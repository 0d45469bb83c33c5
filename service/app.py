"""The FastAPI application: lifespan loads the model bundle and opens the stores once."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors
from .api.routes import admin, docs, items, jobs, ops, search
from .config import Settings
from .engine import Engine
from .guards import CatchAll, JsonGuard
from .jobs import JobManager
from .metrics import REQUEST_LATENCY

log = logging.getLogger("finesearch.service")
STATIC = Path(__file__).with_name("static")


class _TooLarge(StarletteHTTPException):
    """Raised from inside body reads, so FastAPI's and Starlette's parsers pass it on as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes (max_body_bytes)")


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or while streaming (chunked uploads)."""

    def __init__(self, app: ASGIApp, default: int, per_path: dict[str, int]) -> None:
        self.app, self.default, self.per_path = app, default, per_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._reject(send, limit)
            return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return msg

        async def tracking(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited, tracking)
        except _TooLarge:
            if not started:
                await self._reject(send, limit)

    @staticmethod
    async def _reject(send: Send, limit: int) -> None:
        message = f"request body is larger than the limit of {limit} bytes (max_body_bytes)"
        body = json.dumps({"error": {"code": "too_large", "message": message}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class Timing:
    """Request latency per route template and status (pure ASGI: no body buffering, no task groups)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def capture(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUEST_LATENCY.labels(route=route, method=scope["method"], status=str(status)).observe(
                time.perf_counter() - t0)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = engine is None
        app.state.engine = engine or Engine(settings)
        app.state.jobs = JobManager(app.state.engine, settings.data_dir / "jobs", settings.max_concurrent_jobs)
        app.state.engine.refresh_gauges()
        log.info("finesearch ready: model %s on %s", app.state.engine.bundle.id, app.state.engine.device)
        try:
            yield
        finally:
            app.state.jobs.close()
            if own:
                app.state.engine.close()

    app = FastAPI(title="finesearch", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Image–text search: CLIP recall in Qdrant, fine-grained word–patch reranking.")
    app.state.settings = settings
    app.state.engine = None
    app.state.jobs = None
    errors.install(app)

    for r in (search.router, items.router, jobs.router, admin.router, ops.router):
        app.include_router(r)
    docs.install(app)  # Swagger UI and ReDoc served from the package: /docs works offline
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="web")
    # outermost last: CatchAll → BodyLimit → Timing → JsonGuard → routes
    app.add_middleware(JsonGuard, settings=settings)  # type: ignore[arg-type]
    app.add_middleware(Timing)
    app.add_middleware(BodyLimit, default=settings.max_body_bytes,  # type: ignore[arg-type]
                       per_path={"/v1/jobs/index": settings.max_archive_bytes})
    app.add_middleware(CatchAll)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.app:app_from_env` (several workers read FINESEARCH_* themselves)."""
    return create_app(Settings())

