"""The one place that maps errors to HTTP answers, in the negotiated format."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.api.negotiation import render_error, validation_message
from service.errors import (
    DuckcastError,
    StoreTimeout,
    StoreUnavailable,
    TooManyRequests,
    Unauthorized,
)

logger = logging.getLogger(__name__)


async def _domain(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DuckcastError)
    return error_response(request, exc)


def public_message(exc: DuckcastError) -> str:
    """What a client may read of an error. A store failure's own text names internal
    addresses (the store's socket path or host): that goes to the log, never to a client."""
    if isinstance(exc, StoreTimeout):
        return "the store did not answer in time; retry later"
    if isinstance(exc, StoreUnavailable):
        return "the store is unavailable; retry later"
    return exc.message


def error_response(request: Request, exc: DuckcastError) -> Response:
    headers = None
    if exc.status == 503:  # the store, or this worker's hashing pool, is away or busy
        headers = {"Retry-After": "1"}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after)}
    if exc.status >= 500:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
    return render_error(request, exc.status, public_message(exc), headers)


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError | ValidationError)
    if isinstance(exc, ValidationError):
        return render_error(request, 422, validation_message(exc))
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "path"))
        parts.append(f"{loc}: {err['msg']}")
    return render_error(request, 422, "; ".join(parts))


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    return render_error(request, exc.status_code, str(exc.detail), headers)


async def refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
    """A 400 (or a 1008 close, for a WebSocket) before any routing."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect; accepted first, as the streams do, so that a
        await send({"type": "websocket.accept"})  # browser sees the close code
        await send({"type": "websocket.close", "code": 1008, "reason": message})
        return
    await render_error(Request(scope), 400, message)(scope, receive, send)


def install(app: FastAPI) -> None:
    app.add_exception_handler(DuckcastError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    # anything else escapes to service.api.edge.Edge, which logs it and answers 500
