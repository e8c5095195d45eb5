"""Pure ASGI middleware (BaseHTTPMiddleware would break streaming and contextvars)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import refuse
from service.api.negotiation import render_error
from service.api.routing import route_path
from service.errors import PayloadTooLarge
from service.wire import ascii_int

logger = logging.getLogger(__name__)


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
        limit = self.per_path.get(route_path(scope), self.default)
        declared = _content_length(scope)
        if declared is not None:
            size = ascii_int(declared)  # isdigit() would take "²", and int() then raise
            if size is None:
                await render_error(Request(scope), 400, "invalid Content-Length")(
                    scope, receive, send
                )
                return
            if size > limit:
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


def _content_length(scope: Scope) -> str | None:
    # what Request(scope).headers.get() answers, without building one for every request
    for name, value in scope["headers"]:
        if name == b"content-length":
            return bytes(value).decode("latin-1")
    return None


class Utf8Query:
    """400 (a 1008 close, for a WebSocket) for a query string that is not UTF-8: Starlette's URL
    (redirects, `request.url`) would raise on it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and not _utf8(scope["query_string"]):
            await refuse(scope, receive, send, "query string: not valid UTF-8")
            return
        await self.app(scope, receive, send)


def _utf8(raw: bytes) -> bool:
    if raw.isascii():
        return True
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


class SecurityHeaders:
    """A middleware, so it holds for every answer of every route (the streams too):

    - `X-Content-Type-Options: nosniff` on every HTTP response;
    - `Cache-Control: no-store` on everything under /api/ (sessions, items, users: nothing a
      shared cache or the browser's disk should keep);
    - a `Location` that points at the Host the client sent is made relative: the
      trailing-slash redirect would otherwise send a victim to whatever Host an attacker
      injected (cache poisoning);
    - an exception that escapes the app becomes a 500 in the negotiated format with no
      internals (logged here with its traceback), if no response has started yet.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secured = _SecuredSend(scope, send)
        try:
            await self.app(scope, receive, secured)
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not secured.started:
                response = render_error(Request(scope), 500, "internal server error")
                await response(scope, receive, secured)


class _SecuredSend:
    """`send` with the headers added."""

    def __init__(self, scope: Scope, send: Send) -> None:
        self._scope = scope
        self._send = send
        self._private = route_path(scope).startswith("/api/")
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            message["headers"] = _secure_headers(
                self._scope, message.get("headers", []), self._private
            )
        await self._send(message)


_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")


def _secure_headers(
    scope: Scope, headers: Iterable[tuple[bytes, bytes]], private: bool
) -> list[tuple[bytes, bytes]]:
    out = [_NOSNIFF]
    if private:
        out.append(_NO_STORE)
    for name, value in headers:
        lower = name.lower()
        if lower == b"x-content-type-options" or (private and lower == b"cache-control"):
            continue
        if lower == b"location":
            value = _relative_location(scope, value)
        out.append((name, value))
    return out


def _relative_location(scope: Scope, location: bytes) -> bytes:
    host = dict(scope.get("headers", [])).get(b"host")
    for scheme in (b"http://", b"https://"):
        if host and location.startswith(scheme + host):
            rest = location[len(scheme) + len(host) :]
            if rest[:1] in (b"/", b""):
                return b"/" + rest.lstrip(b"/")  # never "//host": protocol-relative
    return location
