"""Shared dependencies: the engine, the job manager, API-key checks, content-type checks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from ..engine import Engine
from ..errors import ApiError
from ..jobs import JobManager


def get_engine(request: Request) -> Engine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ApiError(503, "the model is still loading", "not_ready")
    return engine


def get_jobs(request: Request) -> JobManager:
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise ApiError(503, "the model is still loading", "not_ready")
    return jobs


def _check_key(request: Request) -> None:
    key = request.app.state.settings.api_key
    if not key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "this endpoint needs 'Authorization: Bearer <API key>'", "unauthorized")
    if not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise ApiError(401, "wrong API key", "unauthorized")


def require_write(request: Request) -> None:
    _check_key(request)


def require_read(request: Request) -> None:
    if request.app.state.settings.auth_reads:
        _check_key(request)


def media_type(request: Request) -> str:
    """The request's media type without parameters, lower-cased ('' when there is none): one rule for all."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_json(request: Request) -> None:
    ctype = media_type(request)
    if ctype != "application/json":
        raise ApiError(415, f"send JSON (Content-Type: application/json), not {ctype or 'no content type'}",
                       "unsupported_media_type")


EngineDep = Annotated[Engine, Depends(get_engine)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
Write = Depends(require_write)
Read = Depends(require_read)
JsonBody = Depends(require_json)
