"""Pure ASGI middleware (BaseHTTPMiddleware would break streaming and contextvars)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.negotiation import render_error
from service.errors import PayloadTooLarge
from service.metrics import HTTP_LATENCY, HTTP_REQUESTS


class BodyLimit:
    """413 for bodies over the limit: at once from Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, default: int, per_path: dict[str, int]) -> None:
        self.app = app
        self.default = default
        self.per_path = per_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        declared = Request(scope).headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await render_error(Request(scope), 400, "invalid Content-Length")(
                    scope, receive, send
                )
                return
            if int(declared) > limit:
                await render_error(Request(scope), 413, f"body larger than {limit} bytes")(
                    scope, receive, send
                )
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"body larger than {limit} bytes")
            return message

        await self.app(scope, limited, send)


class Metrics:
    """Counts and times every HTTP request by route template (not raw path: bounded labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"]
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)
