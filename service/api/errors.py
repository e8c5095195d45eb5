"""The one place that maps errors to HTTP answers, in the negotiated format."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.api.negotiation import render_error, validation_message
from service.errors import DuckcastError, StoreUnavailable, Unauthorized

logger = logging.getLogger(__name__)


async def _domain(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DuckcastError)
    return error_response(request, exc)


def error_response(request: Request, exc: DuckcastError) -> Response:
    headers = None
    if isinstance(exc, StoreUnavailable):
        headers = {"Retry-After": "1"}
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    if exc.status >= 500:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
    return render_error(request, exc.status, exc.message, headers)


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


def install(app: FastAPI) -> None:
    app.add_exception_handler(DuckcastError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
