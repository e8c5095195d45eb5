"""Change-event streams: SSE `GET /api/events` and WebSocket `GET /ws/items`.

Both are plain ASGI handlers, routed by FastAPI's router like any route (so `root_path`, the
middleware and the exception handlers hold for them) but called without a Request object or
dependency solving (service.api.routing.StreamEndpoint): a stream lives for hours, and
everything FastAPI keeps per request would be held for as long. The SSE route's declaration
below documents it in OpenAPI; every request of it goes to `sse_stream`.

Under uvicorn's defaults a stream that has caught up is detached (service/api/connection.py):
its handler returns, so every middleware's call for it returns too, after the response head
(or the handshake) and the first bytes have passed through them; the ring then holds the
stream, and runs its tail (`_sse_tail`, `_ws_tail`) in a task of its own when it must catch up
or end (tests/realtime/test_detach.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send

from service.api.auth import Token
from service.api.connection import (
    Detached,
    DetachedHttp,
    DetachedWebSocket,
    Direct,
    connection,
    detach,
    direct,
    release,
)
from service.api.deps import stream_session
from service.api.errors import error_response
from service.api.routing import LeanRoute, StreamEndpoint, lean
from service.errors import DuckcastError, Invalid, StoreUnavailable
from service.metrics import DELIVERIES, DELIVERY_LAG
from service.realtime.filters import Filters
from service.realtime.ring import WRITE_BYTES, Closed, Cursor, EncodedEvent, Ring
from service.realtime.stream import deliver
from service.storeclient import StoreClient
from service.wire import INT64_MAX, STATUSES, Status, bounded_int

router = APIRouter(tags=["events"], route_class=LeanRoute)

RETRY_MS = 2000
# WebSocket close codes, documented in the README.
WS_OVERFLOW = 4008  # the subscriber fell too far behind; reconnect with ?since=<last seq>
WS_UNAUTHORIZED = 4401  # not authenticated, or the session expired or was revoked meanwhile
WS_POLICY = 1008  # invalid query parameters, or the client sent messages on this socket
SERVICE_RESTART = 1012  # this worker is shutting down; reconnect (to another worker)
STORE_GONE = 1011
NOT_READY = 1013  # this worker has not yet learned the store's seq; retry
MAX_SEQ = 2**62
LAG_SAMPLE = 16

SSE_DELIVERIES = DELIVERIES.labels("sse")
WS_DELIVERIES = DELIVERIES.labels("ws")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
OVERFLOW_EVENT = b'event: overflow\ndata: {"reason": "too slow"}\n\n'
EXPIRED_EVENT = b"event: expired\ndata: {}\n\n"
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


def _context(scope: Scope) -> tuple[Ring, StoreClient]:
    state = scope["app"].state
    return state.ring, state.store


def _observe_lag(transport: str) -> Callable[[EncodedEvent], None]:
    """Delivery lag, observed for one socket write in LAG_SAMPLE (and at least once a second):
    an observation costs a few µs in multiprocess mode, per write per subscriber otherwise."""
    histogram = DELIVERY_LAG.labels(transport)
    state = [0, 0.0]  # writes since the last observation; its time

    def observe(ev: EncodedEvent) -> None:
        if not ev.commit_time:
            return
        now = time.time()
        state[0] += 1
        if state[0] >= LAG_SAMPLE or now - state[1] >= 1.0:
            state[0], state[1] = 0, now
            histogram.observe(max(0.0, now - ev.commit_time))

    return observe


SSE_LAG = _observe_lag("sse")
WS_LAG = _observe_lag("ws")


def _sse_params(request: Request) -> tuple[Filters, int | None, Token]:
    token = stream_session(request)
    query = request.query_params
    resume = request.headers.get("last-event-id") or query.get("last_event_id")
    return _filters(query), _int("Last-Event-ID", resume, 0, MAX_SEQ), token


def _ws_params(conn: HTTPConnection) -> tuple[Filters, int | None, bool]:
    query = conn.query_params
    wire = query.get("format", "protobuf")
    if wire not in ("protobuf", "json"):
        raise Invalid("format: must be 'protobuf' or 'json'")
    return _filters(query), _int("since", query.get("since"), 0, MAX_SEQ), wire == "json"


def _batches(parts: list[bytes]) -> list[tuple[int, bytes]]:
    """`parts` joined into writes of at most WRITE_BYTES (one part may exceed it): (parts
    taken so far, bytes) per write."""
    out, i, n = [], 0, len(parts)
    while i < n:
        j, size = i, 0
        while j < n and (size < WRITE_BYTES or j == i):
            size += len(parts[j])
            j += 1
        out.append((j, b"".join(parts[i:j]) if j - i > 1 else parts[i]))
        i = j
    return out


async def _gone(message: Any) -> None:
    """`send` once a stream is detached: its ASGI request is over."""
    raise OSError("the stream is detached from its ASGI request")


class _Out:
    """How a stream writes (one small object, not closures: it lives as long as the stream).

    With a `Direct` connection (service/api/connection.py), a batch of events is one transport
    write, made by the ring's fan-out while the stream is parked (`push`, never blocking) or by
    the stream's coroutine (`write`, waiting for the socket to drain first); otherwise each
    write is an ASGI `send`. Once the stream is detached (`detach`), this object is also what
    the ring wakes to start the stream's coroutine again (`set_result`: `tail` in a task)."""

    __slots__ = ("cursor", "direct", "ring", "send")

    deliveries = SSE_DELIVERIES
    lag = staticmethod(SSE_LAG)

    def __init__(self, send: Send, cursor: Cursor, direct: Direct | None, ring: Ring) -> None:
        self.send = send
        self.cursor = cursor
        self.direct = direct
        self.ring = ring

    def tail(self) -> Coroutine[Any, Any, None]:
        """The stream from its delivery loop to its end."""
        raise NotImplementedError

    def detach(self) -> bool:
        cursor, current = self.cursor, self.direct
        if not isinstance(current, Detached):
            if current is None or cursor.conn is None:
                return False
            detached = detach(cursor.conn, self.ring, cursor)
            if detached is None:
                return False
            # nothing of the ASGI request is kept: its objects are what detaching frees
            self.direct = cursor.conn = detached
            self.send = _gone
        self.ring.hold(cursor, self)
        return True

    # the ring's Waker, while the stream is detached and parked

    def done(self) -> bool:
        return False  # the ring wakes a parked stream once (Ring._unpark)

    def set_result(self, result: None) -> None:
        detached = self.direct
        assert isinstance(detached, Detached)
        detached.spawn(self.tail())

    def encode(self, ev: EncodedEvent) -> bytes:
        raise NotImplementedError

    async def send_parts(self, parts: list[bytes]) -> None:
        """The ASGI path for the events' encodings."""
        raise NotImplementedError

    def push(self, events: list[EncodedEvent]) -> int:
        direct = self.direct
        if direct is None or direct.paused() or not direct.open():
            return 0
        encode = self.encode
        data, size, n = [], 0, 0
        for ev in events:
            part = encode(ev)
            data.append(part)
            size += len(part)
            n += 1
            if size >= WRITE_BYTES:
                break
        direct.write(b"".join(data) if n > 1 else data[0])
        return n

    def push_keepalive(self) -> None:
        pass

    async def write(self, events: list[EncodedEvent], live: bool) -> None:
        cursor, direct, encode = self.cursor, self.direct, self.encode
        parts = [encode(ev) for ev in events]
        done = 0
        for taken, data in _batches(parts):
            cursor.sending = time.monotonic()
            if direct is not None:
                await direct.drain()
            if direct is not None and direct.open():
                direct.write(data)
            else:
                await self.send_parts(parts[done:taken])
            self.deliveries.inc(taken - done)
            if live:
                self.lag(events[done])
            cursor.seq = events[taken - 1].seq
            done = taken

    async def keepalive(self) -> None:
        pass


class _SseOut(_Out):
    __slots__ = ()

    def encode(self, ev: EncodedEvent) -> bytes:
        return ev.sse

    def tail(self) -> Coroutine[Any, Any, None]:
        return _sse_tail(self)

    async def end(self, final: bytes) -> None:
        """`final` (if any), then the end of the body, if the client is still there."""
        current = self.direct
        if isinstance(current, DetachedHttp):
            current.end(final)
            return
        if final:
            await self.body(final)
        conn = self.cursor.conn
        if conn is not None and not conn.gone():
            await self.body(b"", more=False)

    async def body(self, chunk: bytes, more: bool = True) -> None:
        await self.send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def send_parts(self, parts: list[bytes]) -> None:
        await self.body(b"".join(parts))

    def push_keepalive(self) -> None:
        direct = self.direct
        if direct is not None and not direct.paused() and direct.open():
            direct.write(KEEPALIVE_COMMENT)

    async def keepalive(self) -> None:
        await self.body(KEEPALIVE_COMMENT)


class _WsOut(_Out):
    __slots__ = ()
    deliveries = WS_DELIVERIES
    lag = staticmethod(WS_LAG)

    def tail(self) -> Coroutine[Any, Any, None]:
        return _ws_tail(self)

    def push_keepalive(self) -> None:
        current = self.direct
        if isinstance(current, DetachedWebSocket):  # else the server's own pings
            current.ping()

    async def close(self, code: int, reason: str) -> None:
        current = self.direct
        if isinstance(current, DetachedWebSocket):
            current.end(code, reason)
            return
        conn = self.cursor.conn
        if conn is not None and not conn.gone():
            with contextlib.suppress(OSError, RuntimeError):
                await self.send({"type": "websocket.close", "code": code, "reason": reason})


class _WsJsonOut(_WsOut):
    __slots__ = ()

    def encode(self, ev: EncodedEvent) -> bytes:
        return ev.ws_text

    async def send_parts(self, parts: list[bytes]) -> None:
        # the ASGI path sends messages, not frames: one per event (rare: see _Out)
        for part in parts:
            await self.send({"type": "websocket.send", "text": _payload(part).decode()})


class _WsProtoOut(_WsOut):
    __slots__ = ()

    def encode(self, ev: EncodedEvent) -> bytes:
        return ev.ws_binary

    async def send_parts(self, parts: list[bytes]) -> None:
        for part in parts:
            await self.send({"type": "websocket.send", "bytes": _payload(part)})


def _payload(frame: bytes) -> bytes:
    """A frame's payload (ring.ws_frame's header: 2, 4 or 10 bytes)."""
    n = frame[1] & 0x7F
    return frame[2 + (n == 126) * 2 + (n == 127) * 8 :]


# The handlers below parse the request in helpers, so that the objects parsing creates
# (Request, headers, query parameters) are not held for the hours a stream lives.


async def sse_stream(scope: Scope, receive: Receive, send: Send) -> None:
    ring, _ = _context(scope)
    try:
        filters, since, token = _sse_params(Request(scope))
        if not ring.started:
            raise StoreUnavailable("the event stream is not ready yet; retry")
    except DuckcastError as exc:
        await error_response(Request(scope), exc)(scope, receive, send)
        return
    conn = connection(send, receive)
    cursor = ring.subscribe(since, filters, "sse", conn, expires_at=token.expires_at, session=token)
    out = _SseOut(send, cursor, direct(conn), ring)
    cursor.pusher = out if out.direct is not None else None
    opened = False
    try:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await out.body(b'retry: %d\nevent: connected\ndata: {"seq": %d}\n\n' % (RETRY_MS, ring.seq))
        opened = True
    except OSError:
        pass  # the client is gone
    finally:
        if not opened:
            ring.finish(cursor, "client")
            release(conn)
    if not opened:
        return
    del conn  # a detached stream keeps none of the request's objects
    await _sse_tail(out)


async def _sse_tail(out: _SseOut) -> None:
    """Deliver until the stream is detached (returns: the ring holds it) or ends (with its
    documented last event)."""
    ring, cursor = out.ring, out.cursor
    ending, final, detached = "client", b"", False
    try:
        try:
            await deliver(ring, cursor, out)
            detached = True
            return
        except Closed as closed:
            if closed.reason == "overflow":
                final = OVERFLOW_EVENT
            elif closed.reason == "expired":
                final = EXPIRED_EVENT
        except DuckcastError as exc:  # the store went away during replay
            ending = "error"
            final = b"event: error\ndata: %s\n\n" % exc.message.encode()
        await out.end(final)
    except OSError:
        pass  # the client is gone
    finally:
        if not detached:
            ring.finish(cursor, ending)
            if cursor.conn is not None:
                release(cursor.conn)


async def ws_stream(scope: Scope, receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    ring, _ = _context(scope)
    if not ring.started:
        # Accepted first, as below: a browser sees close codes, not a refused handshake.
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": NOT_READY, "reason": "not ready yet"})
        return
    await send({"type": "websocket.accept"})
    try:
        token = stream_session(HTTPConnection(scope))
    except DuckcastError:
        await send(
            {"type": "websocket.close", "code": WS_UNAUTHORIZED, "reason": "not authenticated"}
        )
        return
    try:
        filters, since, as_json = _ws_params(HTTPConnection(scope))
    except DuckcastError as exc:
        await send({"type": "websocket.close", "code": WS_POLICY, "reason": exc.message[:120]})
        return
    conn = connection(send, receive)
    cursor = ring.subscribe(since, filters, "ws", conn, expires_at=token.expires_at, session=token)
    out = (_WsJsonOut if as_json else _WsProtoOut)(send, cursor, direct(conn), ring)
    cursor.pusher = out if out.direct is not None else None
    del conn  # a detached stream keeps none of the request's objects
    await _ws_tail(out)


async def _ws_tail(out: _WsOut) -> None:
    """Deliver until the stream is detached (returns: the ring holds it) or ends (with its
    documented close code)."""
    ring, cursor = out.ring, out.cursor
    code, reason, ending, detached = 1000, "", "client", False
    try:
        try:
            await deliver(ring, cursor, out)
            detached = True
            return
        except Closed as closed:
            if closed.reason == "overflow":
                code, reason = WS_OVERFLOW, "subscriber too slow; resume with ?since="
            elif closed.reason == "shutdown":
                code, reason = SERVICE_RESTART, "worker restarting; reconnect with ?since="
            elif closed.reason == "policy":
                code, reason = WS_POLICY, "clients send nothing on this socket"
            elif closed.reason == "expired":
                code, reason = WS_UNAUTHORIZED, "session expired or revoked; log in again"
        except OSError:
            pass  # the client went away mid-send
        except DuckcastError:
            code, reason, ending = STORE_GONE, "store unavailable; retry with ?since=", "error"
        await out.close(code, reason)
    finally:
        if not detached:
            ring.finish(cursor, ending)
            if cursor.conn is not None:
                release(cursor.conn)


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
