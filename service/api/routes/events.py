"""Change-event streams: SSE `GET /api/events` and WebSocket `GET /ws/items`.

Both are plain ASGI handlers, routed by FastAPI's router like any route (so `root_path`, the
middleware and the exception handlers hold for them) but called without a Request object or
dependency solving (service.api.routing.StreamEndpoint): a stream lives for hours, and
everything FastAPI keeps per request would be held for as long. The SSE route's declaration
below documents it in OpenAPI; every request of it goes to `sse_stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send

from service.api.deps import stream_session
from service.api.errors import error_response
from service.api.routing import LeanRoute, StreamEndpoint, lean
from service.errors import DuckcastError, Invalid
from service.metrics import DELIVERIES
from service.realtime.hub import Filters, Hub, Subscription, SubscriptionClosed
from service.realtime.stream import events_for
from service.storeclient import StoreClient
from service.wire import INT64_MAX, STATUSES, Status, bounded_int

router = APIRouter(tags=["events"], route_class=LeanRoute)

RETRY_MS = 2000
# WebSocket close codes, documented in the README.
WS_OVERFLOW = 4008  # the subscriber fell too far behind; reconnect with ?since=<last seq>
WS_UNAUTHORIZED = 4401
WS_POLICY = 1008  # invalid query parameters, or the client sent messages on this socket
SERVICE_RESTART = 1012  # this worker is shutting down; reconnect (to another worker)
STORE_GONE = 1011
MAX_SEQ = 2**62
CLIENT_MESSAGES_ALLOWED = 64  # clients have nothing to say here; a flood is closed (1008)

SSE_DELIVERIES = DELIVERIES.labels("sse")
WS_DELIVERIES = DELIVERIES.labels("ws")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
OVERFLOW_EVENT = b'event: overflow\ndata: {"reason": "too slow"}\n\n'
KEEPALIVE_COMMENT = b": keep-alive\n\n"


def _int(name: str, value: str | None, low: int, high: int) -> int | None:
    """An optional integer parameter: None if absent, Invalid (422) if out of range."""
    if value is None or value == "":
        return None
    number = bounded_int(value, low, high)
    if number is None:
        raise Invalid(f"{name}: must be an integer from {low} to {high}")
    return number


def _filters(query: Mapping[str, str]) -> Filters:
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise Invalid("status: must be 'active' or 'completed'")
    return Filters(_int("owner_id", query.get("owner_id"), 1, INT64_MAX), status)


class _Client:
    """What a stream can learn of its client's connection without a task of its own.

    Under uvicorn, `send` is a method of the connection object, whose `disconnected` flag says
    the client has gone and whose `transport.abort()` ends a client that stopped reading (a
    send blocked on it would otherwise hold the worker). Elsewhere a watcher task reads
    `receive` for the disconnect and a dropped stream's task is cancelled.
    """

    def __init__(self, send: Send, receive: Receive, sub: Subscription) -> None:
        conn = getattr(send, "__self__", None)
        transport = getattr(conn, "transport", None)
        self._watcher: asyncio.Task[None] | None = None
        if transport is not None and isinstance(getattr(conn, "disconnected", None), bool):
            self._conn: Any = conn
            sub.on_abort(transport.abort)
        else:
            self._conn = None
            self._watcher = asyncio.create_task(_watch_disconnect(receive, sub))
            task = asyncio.current_task()
            assert task is not None
            sub.on_abort(task.cancel)

    def gone(self) -> bool:
        return self._conn is not None and bool(self._conn.disconnected)

    def flooding(self) -> bool:
        queue = getattr(self._conn, "queue", None)
        return queue is not None and queue.qsize() > CLIENT_MESSAGES_ALLOWED

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()


async def _watch_disconnect(receive: Receive, sub: Subscription) -> None:
    while (await receive())["type"] not in ("http.disconnect", "websocket.disconnect"):
        pass
    sub.close("disconnected")


def _context(scope: Scope) -> tuple[Hub, StoreClient]:
    state = scope["app"].state
    return state.hub, state.store


async def sse_stream(scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope)
    try:
        stream_session(request)
        query = request.query_params
        filters = _filters(query)
        resume = request.headers.get("last-event-id") or query.get("last_event_id")
        since = _int("Last-Event-ID", resume, 0, MAX_SEQ)
    except DuckcastError as exc:
        await error_response(request, exc)(scope, receive, send)
        return
    hub, store = _context(scope)
    sub = hub.subscribe(filters, "sse")
    start = hub.seq
    client = _Client(send, receive, sub)

    async def body(chunk: bytes, more: bool = True) -> None:
        await send({"type": "http.response.body", "body": chunk, "more_body": more})

    try:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await body(b'retry: %d\nevent: connected\ndata: {"seq": %d}\n\n' % (RETRY_MS, start))
        try:
            async for batch in events_for(sub, start, since, store):
                if client.gone():
                    return
                if batch:
                    await body(b"".join([ev.sse for ev in batch]))
                    SSE_DELIVERIES.inc(len(batch))
                else:
                    await body(KEEPALIVE_COMMENT)
        except SubscriptionClosed as closed:
            if closed.reason == "overflow":
                await body(OVERFLOW_EVENT)
        except DuckcastError as exc:  # the store went away during replay
            await body(b"event: error\ndata: %s\n\n" % exc.message.encode())
        if not client.gone() and sub.reason != "disconnected":
            await body(b"", more=False)
    except OSError:
        pass  # the client is gone
    finally:
        sub.close("disconnected")
        sub.finish()
        client.close()


async def ws_stream(scope: Scope, receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    conn = HTTPConnection(scope)
    try:
        stream_session(conn)
    except DuckcastError:
        # Accepted first: a browser sees close codes, never the status of a refused handshake.
        await send(
            {"type": "websocket.close", "code": WS_UNAUTHORIZED, "reason": "not authenticated"}
        )
        return
    query = conn.query_params
    try:
        filters = _filters(query)
        since = _int("since", query.get("since"), 0, MAX_SEQ)
        wire = query.get("format", "protobuf")
        if wire not in ("protobuf", "json"):
            raise Invalid("format: must be 'protobuf' or 'json'")
    except DuckcastError as exc:
        await send({"type": "websocket.close", "code": WS_POLICY, "reason": exc.message[:120]})
        return
    hub, store = _context(scope)
    sub = hub.subscribe(filters, "ws")
    start = hub.seq
    client = _Client(send, receive, sub)
    as_json = wire == "json"
    code, reason = 1000, ""
    try:
        async for batch in events_for(sub, start, since, store):
            if client.gone():
                break
            if client.flooding():
                code, reason = WS_POLICY, "clients send nothing on this socket"
                break
            for ev in batch:
                if as_json:
                    await send({"type": "websocket.send", "text": ev.json})
                else:
                    await send({"type": "websocket.send", "bytes": ev.proto})
            if batch:
                WS_DELIVERIES.inc(len(batch))
    except SubscriptionClosed as closed:
        if closed.reason == "overflow":
            code, reason = WS_OVERFLOW, "subscriber too slow; resume with ?since="
        elif closed.reason == "shutdown":
            code, reason = SERVICE_RESTART, "worker restarting; reconnect with ?since="
    except OSError:
        pass  # the client went away mid-send
    except DuckcastError:
        code, reason = STORE_GONE, "store unavailable; retry with ?since="
    try:
        sub.close("disconnected")
        if not client.gone():
            with contextlib.suppress(OSError, RuntimeError):
                await send({"type": "websocket.close", "code": code, "reason": reason})
    finally:
        sub.finish()
        client.close()


SSE = StreamEndpoint(sse_stream)
router.routes.append(WebSocketRoute("/ws/items", StreamEndpoint(ws_stream)))


class _Stream(Response):
    """The declared response class, for OpenAPI: `sse_stream` answers every request."""

    def __init__(self) -> None:  # not Response.__init__: no body, no Content-Length
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await SSE(scope, receive, send)


@router.get(
    "/api/events",
    status_code=200,
    response_class=_Stream,
    responses={200: {"content": {"text/event-stream": {}}}},
)
@lean(SSE.take_all)
async def sse_events(
    owner_id: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
    status: Status | None = None,
    last_event_id: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    token: str | None = None,
    last_event_id_header: Annotated[int | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """Server-Sent Events: `connected`, then `item_created` / `item_updated` /
    `item_deleted` (with `id:` = seq), `reset`, `overflow`; see the README."""
    # The declaration only: its lean handler (`sse_stream`) takes every request.
    return _Stream()
