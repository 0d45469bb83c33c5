"""Pure-ASGI middleware: no request may 500 the connection away, no body is read past its limit, and no JSON
body reaches a parser unchecked.

`CatchAll` replaces Starlette's `Exception` handler, which answers and then re-raises, so that uvicorn
drops the connection and a keep-alive client's next request fails too. Here an unexpected exception
becomes a 500 in the error shape and the connection stays usable.

`JsonGuard` reads a JSON body (bounded by `max_json_bytes`, by Content-Length or while streaming),
checks its shape and values (service/validation.py) and only then replays it to FastAPI, whose own
`json.loads` would accept NaN, recurse without bound and hand a million items to pydantic.

`BodyLimit` answers 413 by Content-Length or while streaming; `Timing` records latency per route and status.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Settings
from ..errors import status_of
from ..exceptions import ServiceError
from ..metrics import ERRORS, REQUEST_LATENCY
from ..validation import ROUTE_RULES, strict_loads

log = logging.getLogger("finesearch.service")


async def send_error(send: Send, status: int, code: str, message: str, close: bool = False) -> None:
    ERRORS.labels(code=code).inc()
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class CatchAll:
    """Any exception that escaped the routes' handlers: logged, answered 500 with the error shape, not re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await send_error(send, 500, "internal_error", "internal error; the server log has the details")


def _is_json(scope: Scope) -> bool:
    """FastAPI parses a body as JSON when the type is JSON-ish or missing, so both are guarded. A request may
    repeat the header and servers differ on which copy wins: any JSON-ish copy puts the body under guard."""
    types = [v.split(b";")[0].strip().lower() for k, v in scope["headers"] if k.lower() == b"content-type"]
    return not types or any(t in (b"", b"application/json") or t.endswith(b"+json") for t in types)


class JsonGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH") or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        limit = self.settings.max_json_bytes
        length = dict(scope["headers"]).get(b"content-length")
        too_large = f"JSON body is larger than the limit of {limit} bytes (max_json_bytes)"
        if length is not None and length.isdigit() and int(length) > limit:
            await send_error(send, 413, "too_large", too_large, close=True)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(send, 413, "too_large", too_large, close=True)
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            try:
                strict_loads(body, self.settings, ROUTE_RULES.get(scope["path"], ()))
            except ServiceError as exc:
                await send_error(send, status_of(exc), exc.code, exc.message)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


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
