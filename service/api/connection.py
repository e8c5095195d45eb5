"""The one adapter onto the ASGI server's connection objects, for change streams.

A stream must learn, without a task of its own, that its client has gone, that a WebSocket
client sent a message (clients have nothing to say on /ws/items: closed 1008), and must be able
to end a client that stopped reading (a send blocked on it would otherwise hold the worker).
ASGI has no way to say any of this without reading `receive` in a second task, so under uvicorn
(pinned in pyproject.toml; tests/realtime/test_server_hooks.py runs every `http=` and `ws=`
implementation) this reads the connection object behind `send`:

- HTTP (h11, httptools): the request cycle's `disconnected` flag and `transport`.
- WebSocket `websockets` (legacy protocol): its `messages` deque and `closed` state.
- WebSocket `websockets-sansio`, `wsproto`: the `queue` of received ASGI events and
  `disconnected`; uvicorn pauses reading after one queued message, so one is all we see.

Anything else gets a watcher task reading `receive` (one task per stream, the old cost).

Writes: each wake-up hands a stream several events, and ASGI's `send` takes one message at a
time (a dict, a coroutine, its own flow-control wait and framing per event). Where uvicorn's
framing is simple and its flow control readable, `direct()` writes a batch in ONE
`transport.write`: httptools (an SSE body: one HTTP chunk) and the `websockets-sansio` and
`wsproto` WebSocket implementations (frames encoded once per event by the ring, concatenated;
the server's frames are unmasked, so they are the same bytes for every subscriber). Flow
control is uvicorn's own: `paused()` is its high-water state, `drain()` waits on its event
(set again on resume and on connection loss). h11 and the legacy `websockets` implementation
keep `send`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from starlette.types import Receive, Send

from service.realtime.ring import Connection


class Direct(Protocol):
    """Writing to the server's transport without `send`."""

    def open(self) -> bool:
        """The response (or handshake) is under way and not finished: a write may go now."""

    def paused(self) -> bool:
        """The transport is above its high-water mark (or closing): do not add to it."""

    async def drain(self) -> None:
        """Until the transport is below its low-water mark, or lost."""

    def write(self, data: bytes) -> None:
        """Part of the body (HTTP: one chunk) or whole frames (WebSocket)."""


class _Http:
    __slots__ = ("_cycle",)

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle

    def gone(self) -> bool:
        return bool(self._cycle.disconnected) or self._cycle.transport.is_closing()

    def client_sent(self) -> bool:
        return False  # an SSE client's request has no body

    def abort(self) -> None:
        self._cycle.transport.abort()

    # Direct (httptools only: h11's cycle has no `chunked_encoding` and keeps its own state)

    def open(self) -> bool:
        cycle = self._cycle
        return (
            cycle.chunked_encoding is True
            and cycle.response_started
            and not cycle.response_complete
            and not cycle.disconnected
            and not cycle.transport.is_closing()
        )

    def paused(self) -> bool:
        return bool(self._cycle.flow.write_paused) or self._cycle.transport.is_closing()

    async def drain(self) -> None:
        cycle = self._cycle
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()

    def write(self, data: bytes) -> None:
        self._cycle.transport.write(b"%x\r\n%s\r\n" % (len(data), data))


class _LegacyWebSocket:
    __slots__ = ("_proto",)

    def __init__(self, proto: Any) -> None:
        self._proto = proto

    def gone(self) -> bool:
        return bool(self._proto.closed) or self._proto.transport.is_closing()

    def client_sent(self) -> bool:
        return len(self._proto.messages) > 0

    def abort(self) -> None:
        self._proto.transport.abort()


class _QueuedWebSocket:
    __slots__ = ("_proto",)

    def __init__(self, proto: Any) -> None:
        self._proto = proto
        # websockets-sansio keeps the handshake's request and response (their headers: ~2 KB)
        # for the connection's life, and reads them only until the handshake is complete.
        if proto.handshake_complete and getattr(proto, "response", None) is not None:
            proto.request = proto.response = None

    def gone(self) -> bool:
        proto = self._proto
        if proto.disconnected or proto.transport.is_closing():
            return True
        # a close frame from the client queues "websocket.disconnect" before connection_lost
        return any(m["type"] == "websocket.disconnect" for m in proto.queue._queue)

    def client_sent(self) -> bool:
        return any(m["type"] == "websocket.receive" for m in self._proto.queue._queue)

    def abort(self) -> None:
        self._proto.transport.abort()

    # Direct: both implementations keep `handshake_complete`, `close_sent` and a `writable`
    # event that follows pause_writing/resume_writing.

    def open(self) -> bool:
        proto = self._proto
        return bool(
            proto.handshake_complete
            and not proto.close_sent
            and not proto.disconnected
            and not proto.transport.is_closing()
        )

    def paused(self) -> bool:
        return not self._proto.writable.is_set() or self._proto.transport.is_closing()

    async def drain(self) -> None:
        await self._proto.writable.wait()

    def write(self, data: bytes) -> None:
        self._proto.transport.write(data)


class _Watched:
    """Not uvicorn: a task reads `receive`; abort cancels the stream's task."""

    __slots__ = ("_gone", "_sent", "_stream", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._gone = self._sent = False
        self._stream = asyncio.current_task()
        self._watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            kind = (await receive())["type"]
            if kind in ("http.disconnect", "websocket.disconnect"):
                self._gone = True
                return
            if kind == "websocket.receive":
                self._sent = True

    def gone(self) -> bool:
        return self._gone

    def client_sent(self) -> bool:
        return self._sent

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.cancel()

    def close(self) -> None:
        self._watcher.cancel()


def connection(send: Send, receive: Receive) -> Connection:
    conn = getattr(send, "__self__", None)
    transport = getattr(conn, "transport", None)
    if conn is not None and transport is not None:
        if isinstance(getattr(conn, "queue", None), asyncio.Queue) and hasattr(
            conn, "disconnected"
        ):
            return _QueuedWebSocket(conn)
        if hasattr(conn, "messages") and hasattr(conn, "closed"):
            return _LegacyWebSocket(conn)
        if isinstance(getattr(conn, "disconnected", None), bool):
            return _Http(conn)
    return _Watched(receive)


def direct(conn: Connection) -> Direct | None:
    """The connection, if a stream may write to its transport directly."""
    if isinstance(conn, _Http) and hasattr(conn._cycle, "chunked_encoding"):
        return conn
    if isinstance(conn, _QueuedWebSocket) and isinstance(
        getattr(conn._proto, "writable", None), asyncio.Event
    ):
        return conn
    return None


def release(conn: Connection) -> None:
    """The stream has ended: stop its watcher, if it has one."""
    if isinstance(conn, _Watched):
        conn.close()
