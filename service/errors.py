"""One error shape for every failure: {"error": {"code", "message"}}, never a stack trace.

The only place where the service's refusals (`service/exceptions.py`) become HTTP statuses.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.stores.base import StoreError

from .exceptions import (
    BadInput,
    Conflict,
    InvalidRequest,
    NotFound,
    ServiceError,
    TooLarge,
    Unavailable,
    UnsupportedMedia,
)
from .metrics import ERRORS

log = logging.getLogger("finesearch.service")

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "invalid_request",
          429: "too_many_requests", 503: "not_ready"}


STATUS: dict[type[ServiceError], int] = {InvalidRequest: 422, BadInput: 400, NotFound: 404, Conflict: 409,
                                         TooLarge: 413, UnsupportedMedia: 415, Unavailable: 503}


def status_of(exc: ServiceError) -> int:
    """The HTTP status of a refusal: its class's, or the nearest base class's that has one."""
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 400


class ApiError(Exception):
    """An HTTP-level refusal raised by the routes and their dependencies (auth, content types, multipart)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    ERRORS.labels(code=code).inc()
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "form"))
        parts.append(f"{loc or 'request'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(ServiceError)
    async def _refused(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(status_of(exc), exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc))

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        """The vector store refused or did not answer: the server is fine, the dependency is not."""
        log.error("store error: %s", exc)
        return error_response(503, "store_unavailable", f"the vector store failed: {exc}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail))
    # Unexpected exceptions are answered by the pure-ASGI `api/middleware.CatchAll`, not by an `Exception` handler here:
    # Starlette re-raises after such a handler responds, and uvicorn then drops the connection.
