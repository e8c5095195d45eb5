"""`Edge`: the one middleware around every route (added in service.api.app), pure ASGI.

One layer, not four: a middleware's frame, and the `send` it wraps, live as long as the
request, and an event stream is held for hours, thousands per worker. So every request gets one
frame here and one `send` wrapper (`_Answer`), and `receive` is wrapped only when the body's
length is not already bounded by the HTTP/1 framing. What it does, outermost first:

- Observes every HTTP request: a request id (`X-Request-ID`: the caller's when it is 1-128
  characters of `[A-Za-z0-9._:/+=-]` and nothing the log redaction would hide, else made),
  returned on the response and set on every log record written meanwhile
  (service.logging.REQUEST); counted and timed by route *template*, as the answer's last
  part is handed to the server (so before it leaves: a client that has its answer finds it
  counted on /metrics, whichever worker answers that); one access log line
  (`duckcast.access`, INFO; `DUCKCAST_ACCESS_LOG=false` turns it off): method, route template,
  status, duration, request id, user id. Never the raw path or query string (`?token=` is
  accepted on streams) and never a header value. Event streams get a request id but are
  neither timed nor logged here: they are long-lived and have their own metrics (a stream
  route marks its scope with STREAM_KEY).
- Secures every answer of every route, the streams too: `X-Content-Type-Options: nosniff`;
  `Cache-Control: no-store` under /api/ (sessions, items, users: nothing a shared cache or the
  browser's disk should keep); a `Location` that points at the Host the client sent is made
  relative (the trailing-slash redirect would otherwise send a victim to whatever Host an
  attacker injected: cache poisoning); an exception that escapes the app becomes a 500 in the
  negotiated format with no internals (logged here with its traceback, and the request id),
  if no response has started yet.
- Refuses a query string that is not UTF-8 (Starlette's URL, for redirects and `request.url`,
  would raise on it): 400, or a 1008 close for a WebSocket.
- Limits request bodies per path: 413 at once from Content-Length (400 if it is not a number),
  else while the body streams in (PayloadTooLarge from `receive`, answered by the app's
  error handlers).
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from random import getrandbits
from typing import Any

from prometheus_client.metrics import Counter, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException, WebSocketException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from service.api.errors import refuse
from service.api.negotiation import render_error
from service.errors import PayloadTooLarge
from service.logging import REQUEST, AccessLog, RequestContext
from service.metrics import HTTP_LATENCY, HTTP_REQUESTS, route_group
from service.redaction import redact
from service.wire import ascii_int

STREAM_KEY = "duckcast.stream"
REQUEST_ID_HEADER = b"x-request-id"
VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
# Any token is a method to uvicorn: a label per made-up method would grow without bound.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# HTTP/1 frames a body by Content-Length or chunked encoding, nothing else: with neither
# header the body is empty, and with Content-Length the server delivers exactly that many bytes.
FRAMED = frozenset({"1.0", "1.1"})

logger = logging.getLogger(__name__)

_NOSNIFF = (b"x-content-type-options", b"nosniff")
_NO_STORE = (b"cache-control", b"no-store")


def route_of(scope: Scope) -> str:
    """The matched route's template (FastAPI's router puts the route in the scope)."""
    return str(getattr(scope.get("route"), "path", "unmatched"))


def route_path(scope: Scope) -> str:
    """The path below the app's mount point (`root_path`), as the router matches it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :] or "/"
    return path


def given_request_id(value: bytes) -> str | None:
    """The caller's X-Request-ID, if we may keep it."""
    if VALID_REQUEST_ID.fullmatch(value):
        given = bytes(value).decode("ascii")
        # it goes into every log record of the request: never a credential
        if redact(given) == given:
            return given
    return None


class Edge:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        body_limits: dict[str, int] | None = None,
        access_log: bool = True,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.body_limits = body_limits or {}
        self.access_log = AccessLog() if access_log else None
        # label lookups cost more than the increments: one child per key, made once
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._timers: dict[tuple[str, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket" and not _utf8(scope["query_string"]):
                await refuse(scope, receive, send, "query string: not valid UTF-8")
                return
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = declared = None
        chunked = False
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                if request_id is None:  # the first one counts
                    request_id = given_request_id(value) or ""
            elif name == b"content-length":
                if declared is None:
                    declared = bytes(value).decode("latin-1")
            elif name == b"transfer-encoding":
                chunked = True
        # 32 hex digits as uuid4().hex has them, without its system call (os.urandom): an id
        # names a request in the logs and need not be secret (a client may choose its own);
        # random reseeds in a forked child, so workers do not repeat each other's.
        context = RequestContext(request_id or f"{getrandbits(128):032x}")
        token = REQUEST.set(context)
        path = route_path(scope)
        answer = _Answer(self, scope, send, context.request_id, path.startswith("/api/"), started)
        try:
            limit = self.body_limits.get(path, self.max_body)
            refusal = _refusal(scope["query_string"], declared, limit)
            if refusal is not None:
                await render_error(Request(scope), *refusal)(scope, receive, answer)
            else:
                if (declared is None and chunked) or scope.get("http_version") not in FRAMED:
                    receive = _LimitedBody(receive, limit)
                await self.app(scope, receive, answer)
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not answer.started:
                response = render_error(Request(scope), 500, "internal server error")
                await response(scope, receive, answer)
        finally:
            REQUEST.reset(token)
            if STREAM_KEY not in scope:
                if answer.labels is None:  # no complete answer: counted now
                    answer.elapsed = time.perf_counter() - started
                    answer.labels = self._count(scope, answer.status, answer.elapsed)
                self._log(*answer.labels, answer.status, answer.elapsed, context)

    def _count(self, scope: Scope, status: int, elapsed: float) -> tuple[str, str]:
        """Counted and timed by route template: as an answer's last bytes are handed to the
        server, before they leave (_Answer), so a client that has its answer and asks for
        /metrics, from whichever worker, finds it counted."""
        method: str = scope["method"] if scope["method"] in METHODS else "OTHER"
        route = route_of(scope)
        counter = self._counters.get((method, route, status))
        if counter is None:
            counter = HTTP_REQUESTS.labels(method, route, str(status))
            self._counters[(method, route, status)] = counter
        counter.inc()
        timer = self._timers.get((method, route))
        if timer is None:
            timer = HTTP_LATENCY.labels(method, route, route_group(route))
            self._timers[(method, route)] = timer
        timer.observe(elapsed)
        return method, route

    def _log(
        self, method: str, route: str, status: int, elapsed: float, context: RequestContext
    ) -> None:
        if self.access_log is not None and self.access_log.enabled():
            self.access_log.request(
                method, route, status, elapsed, context.request_id, context.user_id
            )


class _Answer:
    """The request's one `send` wrapper: notes the status, adds the response headers, and
    has the request counted (Edge._count) just before the answer's last part goes out."""

    __slots__ = (
        "_edge",
        "_id_header",
        "_private",
        "_scope",
        "_send",
        "_t0",
        "elapsed",
        "labels",
        "started",
        "status",
    )

    def __init__(
        self, edge: Edge, scope: Scope, send: Send, request_id: str, private: bool, t0: float
    ) -> None:
        self._edge = edge
        self._scope = scope
        self._send = send
        self._id_header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        self._private = private
        self._t0 = t0
        self.elapsed = 0.0
        self.labels: tuple[str, str] | None = None  # (method, route) once counted
        self.started = False
        self.status = 500  # what the client gets if the app raises before answering

    def __call__(self, message: Message) -> Awaitable[None]:
        # Not a coroutine of its own: the server's send's awaitable, handed back once the
        # message is noted (a frame less per message; the caller awaits it at once, as before)
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            self.status = message["status"]
            message["headers"] = self._headers(message.get("headers", ()))
        elif (
            kind == "http.response.body"
            and self.labels is None
            and not message.get("more_body", False)
            and STREAM_KEY not in self._scope
        ):
            self.elapsed = time.perf_counter() - self._t0
            self.labels = self._edge._count(self._scope, self.status, self.elapsed)
        return self._send(message)

    def _headers(self, headers: Any) -> list[tuple[bytes, bytes]]:
        private = self._private
        out = [_NOSNIFF, _NO_STORE] if private else [_NOSNIFF]
        for name, value in headers:
            lower = name.lower()
            if lower == b"x-content-type-options" or (private and lower == b"cache-control"):
                continue
            if lower == b"location":
                value = _relative_location(self._scope, value)
            out.append((name, value))
        out.append(self._id_header)
        return out


class _LimitedBody:
    """`receive` that raises PayloadTooLarge once the body passes `limit` bytes."""

    __slots__ = ("_receive", "limit", "received")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.received = 0

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise PayloadTooLarge(f"body larger than {self.limit} bytes")
        return message


def _refusal(query: bytes, declared: str | None, limit: int) -> tuple[int, str] | None:
    """The status and message for a request refused before the app sees it, if it is."""
    if not _utf8(query):
        return 400, "query string: not valid UTF-8"
    if declared is not None:
        size = ascii_int(declared)  # isdigit() would take "²", and int() then raise
        if size is None:
            return 400, "invalid Content-Length"
        if size > limit:
            return 413, f"body larger than {limit} bytes"
    return None


def _utf8(raw: bytes) -> bool:
    if raw.isascii():
        return True
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _relative_location(scope: Scope, location: bytes) -> bytes:
    host = dict(scope.get("headers", [])).get(b"host")
    for scheme in (b"http://", b"https://"):
        if host and location.startswith(scheme + host):
            rest = location[len(scheme) + len(host) :]
            if rest[:1] in (b"/", b""):
                return b"/" + rest.lstrip(b"/")  # never "//host": protocol-relative
    return location


class _FileStack(AsyncExitStack):
    """FastAPI's per-request stack for uploaded files (`fastapi_middleware_astack`), closed
    only if something was put on it: a lean handler's request never does."""

    used = False

    def push(self, exit: Any) -> Any:
        self.used = True
        return super().push(exit)

    def enter_context(self, cm: Any) -> Any:
        self.used = True
        return super().enter_context(cm)

    def callback(self, callback: Any, /, *args: Any, **kwds: Any) -> Any:
        self.used = True
        return super().callback(callback, *args, **kwds)

    async def enter_async_context(self, cm: Any) -> Any:
        self.used = True
        return await super().enter_async_context(cm)

    def push_async_exit(self, exit: Any) -> Any:
        self.used = True
        return super().push_async_exit(exit)

    def push_async_callback(self, callback: Any, /, *args: Any, **kwds: Any) -> Any:
        self.used = True
        return super().push_async_callback(callback, *args, **kwds)


class ExceptionLayer:
    """The app's exception handlers around the router, in the place of Starlette's
    ExceptionMiddleware and FastAPI's AsyncExitStackMiddleware (service.api.app), doing what
    they do in one frame, with no Request, closures or exit stack made for a request that
    raises nothing:

    - an exception from routing or a route is answered by the handler registered for its
      status (HTTPException) or for the nearest class in its MRO, as Starlette looks them up,
      Starlette's own defaults for HTTPException and WebSocketException beneath the app's; an
      exception with no handler, or raised once the response has started, goes on up (to
      Edge: logged, 500);
    - `starlette.exception_handlers` in the scope, for the handling inside each route
      (FastAPI's request_response);
    - `fastapi_middleware_astack`, the stack FastAPI closes uploaded files on, closed when the
      route returns (before an exception is answered, as before).

    Whether the response has started is read from Edge's `_Answer` when it is this layer's
    `send` (no middleware in between), else noted by a wrapper of `send`."""

    def __init__(self, app: ASGIApp, handlers: dict[Any, Callable[..., Any]]) -> None:
        self.app = app
        defaults = ExceptionMiddleware(app)
        exceptions: dict[Any, Callable[..., Any]] = {
            HTTPException: defaults.http_exception,
            WebSocketException: defaults.websocket_exception,
        }
        statuses: dict[int, Callable[..., Any]] = {}
        for key, handler in handlers.items():
            if isinstance(key, int):
                statuses[key] = handler
            else:
                exceptions[key] = handler
        self.exceptions, self.statuses = exceptions, statuses
        self.tables = (exceptions, statuses)

    def handler_for(self, exc: Exception) -> Callable[..., Any] | None:
        if isinstance(exc, HTTPException):
            handler = self.statuses.get(exc.status_code)
            if handler is not None:
                return handler
        for cls in type(exc).__mro__:
            handler = self.exceptions.get(cls)
            if handler is not None:
                return handler
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        scope["starlette.exception_handlers"] = self.tables
        files = _FileStack()
        scope["fastapi_middleware_astack"] = files
        answer = send if isinstance(send, _Answer) else _Started(send)
        try:
            try:
                await self.app(scope, receive, answer)
            finally:
                if files.used:
                    await files.aclose()
        except Exception as exc:
            handler = self.handler_for(exc)
            if handler is None:
                raise
            if answer.started:
                raise RuntimeError("handled exception, but the response had started") from exc
            conn: Request | WebSocket = (
                Request(scope, receive, send)
                if scope["type"] == "http"
                else WebSocket(scope, receive, send)
            )
            if inspect.iscoroutinefunction(handler):
                response = await handler(conn, exc)
            else:
                response = await run_in_threadpool(handler, conn, exc)
            if response is not None:
                await response(scope, receive, answer)


class _Started:
    """`send`, noting whether the response has started (a middleware sits between Edge and
    the exception layer)."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)
