"""Every HTTP request: a request id, counted and timed by route template, one access log line.
A middleware (added in service.api.app), so it wraps every route, the lean ones included.

- `X-Request-ID`: taken from the request when it is 1-128 characters of `[A-Za-z0-9._:/+=-]`
  and nothing the log redaction would hide (a proxy's id keeps its trace), otherwise made;
  returned on the response, and on every log record written while the request is handled
  (service.logging.REQUEST).
- The access log (`duckcast.access`, INFO; `DUCKCAST_ACCESS_LOG=false` turns it off): method,
  route *template*, status, duration, request id, user id. Never the raw path or query string
  (`?token=` is accepted on streams) and never a header value.
- Event streams get a request id but are neither timed nor logged here: they are long-lived
  and have their own metrics (a stream route marks its scope with STREAM_KEY).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from prometheus_client.metrics import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logging import ACCESS_LOGGER, REQUEST, RequestContext
from service.metrics import HTTP_LATENCY, HTTP_REQUESTS, route_group
from service.redaction import redact

STREAM_KEY = "duckcast.stream"
REQUEST_ID_HEADER = b"x-request-id"
VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
# Any token is a method to uvicorn: a label per made-up method would grow without bound.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

access = logging.getLogger(ACCESS_LOGGER)


def route_of(scope: Scope) -> str:
    """The matched route's template (FastAPI's router puts the route in the scope)."""
    return str(getattr(scope.get("route"), "path", "unmatched"))


def request_id_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if VALID_REQUEST_ID.fullmatch(value):
                given = bytes(value).decode("ascii")
                # it goes into every log record of the request: never a credential
                if redact(given) == given:
                    return given
            break
    return os.urandom(16).hex()  # 32 hex digits, as uuid4().hex, at a third of the cost


class RequestObserver:
    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        # label lookups cost more than the increments: one child per key, made once
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._timers: dict[tuple[str, str], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context = RequestContext(request_id_of(scope))
        header = (REQUEST_ID_HEADER, context.request_id.encode("ascii"))
        status = 500  # what the client gets if the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = REQUEST.set(context)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST.reset(token)
            if STREAM_KEY not in scope:
                self._observe(scope, status, time.perf_counter() - started, context)

    def _observe(self, scope: Scope, status: int, elapsed: float, context: RequestContext) -> None:
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
        if self.access_log and access.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "request_id": context.request_id,
                "user_id": context.user_id,
            }
            access.info("%s %s %d %.1fms", method, route, status, elapsed * 1000, extra=fields)
