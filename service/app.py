"""The FastAPI application: lifespan loads the model bundle and opens the stores once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from . import errors
from .api.middleware import BodyLimit, CatchAll, JsonGuard, Timing
from .api.routes import admin, docs, items, jobs, ops, search
from .config import Settings
from .engine import Engine
from .jobs import JobManager

log = logging.getLogger("finesearch.service")
STATIC = Path(__file__).with_name("static")


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = engine is None
        app.state.engine = engine or Engine(settings)
        app.state.jobs = JobManager(app.state.engine, settings.data_dir / "jobs", settings.max_concurrent_jobs)
        app.state.engine.catalog.refresh_gauges()
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

