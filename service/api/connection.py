"""The one adapter onto the ASGI server's connection objects, for change streams.

A stream must learn, without a task of its own, that its client has gone, that a WebSocket
client sent a message (clients have nothing to say on /ws/items: closed 1008), and must be able
to end a client that stopped reading (a send blocked on it would otherwise hold the worker).
ASGI has no way to say any of this without reading `receive` in a second task, so under uvicorn
(bounded in pyproject.toml; tests/realtime/test_streams.py runs h11, httptools and every
`ws=` implementation) this reads the connection object behind `send`:

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

Detaching: a parked stream needs neither its ASGI task nor the server's request objects, and
they are most of what an idle subscriber costs (its ~20 coroutine frames, the request cycle,
the scope and its headers, the parser, the protocol's events and queues: ~15 KB). Once a
caught-up stream's response head (or handshake) and first bytes have gone out through the
router and every middleware, `detach()` hands its transport to a small protocol object of
ours (`transport.set_protocol`), and the stream's handler returns: its middleware calls
return then, while the stream goes on. From then on the ring holds the stream: its cursor,
its writer and this protocol. The protocol learns at once of a disconnect (`connection_lost`),
EOF, and what a client sends (SSE: anything ends the stream; WebSocket: a data frame is closed
1008, a close frame answered, a ping ponged); it keeps uvicorn's bookkeeping (it replaces the
server's protocol in `server_state.connections`, so `limit_concurrency` counts it and shutdown
calls its `shutdown()`), and a task the stream needs later (to catch up, to end) is counted in
`server_state.tasks`. Supported: httptools with websockets-sansio (uvicorn's defaults); the
other implementations keep their task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

from starlette.types import Receive, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from service.api.routing import SERVER_CONNECTION
from service.realtime.ring import Connection, Cursor, Ring


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


# -- detached streams ------------------------------------------------------------------------

# After our close frame, how long a WebSocket client has to answer it before the connection is
# closed anyway (uvicorn waits 10 s; a stream ends at shutdown, where 1 s is the grace).
CLOSE_TIMEOUT = 1.0
_PING = b"\x89\x00"  # an empty ping frame (a server's frames are not masked)


class _NoTransport:
    """The transport the server's objects of a detached stream are left with: their task is
    ending, and must not close (or write to) a connection it no longer owns."""

    __slots__ = ()

    def is_closing(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


_NO_TRANSPORT = _NoTransport()


class Detached(asyncio.Protocol):
    """A parked stream's connection once its ASGI task has ended: the server protocol's
    successor on the transport, and the stream's `Connection` and `Direct`."""

    __slots__ = (
        "_connections",
        "_cursor",
        "_drain",
        "_lost",
        "_paused",
        "_ring",
        "_tasks",
        "transport",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        connections: set[Any],
        tasks: set[asyncio.Task[None]],
        ring: Ring,
        cursor: Cursor,
    ) -> None:
        self.transport = transport
        self._connections = connections  # uvicorn's server_state.connections and .tasks
        self._tasks = tasks
        self._ring = ring
        self._cursor = cursor
        self._paused = False
        self._lost = False
        self._drain: asyncio.Future[None] | None = None

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run the stream's coroutine again (to catch up, or to end), counted as uvicorn counts
        its request tasks (graceful shutdown waits for them, then cancels them)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: the stream ends with its documented close."""
        self._ring.drop(self._cursor, "shutdown")

    # asyncio.Protocol

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._connections.discard(self)
        self._wake_drain()
        self._ring.drop(self._cursor, "client")

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself: connection_lost follows

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        fut, self._drain = self._drain, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    # Connection

    def gone(self) -> bool:
        return self._lost or self.transport.is_closing()

    def client_sent(self) -> bool:
        return False  # acted on at once, in data_received

    def abort(self) -> None:
        self.transport.abort()

    # Direct

    def open(self) -> bool:
        return not self._lost and not self.transport.is_closing()

    def paused(self) -> bool:
        return self._paused or self.transport.is_closing()

    async def drain(self) -> None:
        if self._paused and not self._lost:
            fut = self._drain
            if fut is None or fut.done():
                fut = self._drain = asyncio.get_running_loop().create_future()
            await fut

    def write(self, data: bytes) -> None:
        self.transport.write(data)


class DetachedHttp(Detached):
    """An SSE response, chunked."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        # An SSE client has nothing to send once its request is in: a pipelined request
        # would wait for ever behind the stream. The stream ends, and the connection closes.
        self._ring.drop(self._cursor, "client")
        self.transport.close()

    def write(self, data: bytes) -> None:
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self, final: bytes) -> None:
        """The last chunk (if any), the end of the body, and the connection closes (it was
        the server's to keep alive; a detached stream cannot hand it back)."""
        if self.open():
            last = b"%x\r\n%s\r\n" % (len(final), final) if final else b""
            self.transport.write(last + b"0\r\n\r\n")
        self.transport.close()


class DetachedWebSocket(Detached):
    """A WebSocket after the handshake: reads the client's frames (RFC 6455 section 5)."""

    __slots__ = ("_buf", "_closing", "_pong_due")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._buf: bytes | None = b""  # a partial frame; None: input is ignored from now on
        self._closing = False  # our close frame has been sent
        self._pong_due = False  # our last ping is unanswered

    def data_received(self, data: bytes) -> None:
        if self._buf is None:
            return
        buf = self._buf + data if self._buf else data
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            opcode, size = b0 & 0x0F, b1 & 0x7F
            if opcode < 0x8 or opcode > 0xA or b0 & 0xF0 != 0x80 or not b1 & 0x80 or size > 125:
                # A data frame (clients send nothing on /ws/items: closed 1008), or what is
                # not a client's control frame (unmasked, fragmented, reserved bits, too long)
                self._buf = None
                if self._closing:
                    self.transport.close()
                else:
                    self._ring.drop(self._cursor, "policy")
                return
            end = 6 + size
            if len(buf) < end:
                break
            mask, payload = buf[2:6], buf[6:end]
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            buf = buf[end:]
            if opcode == 0x8:  # close: answered with its code, and the connection closes
                self._buf = None
                if not self._closing:
                    self._closing = True
                    self.transport.write(bytes((0x88, min(len(payload), 2))) + payload[:2])
                self.transport.close()
                self._ring.drop(self._cursor, "client")
                return
            if opcode == 0x9 and not self._closing:
                self.transport.write(bytes((0x8A, size)) + payload)
            elif opcode == 0xA:
                self._pong_due = False
        self._buf = buf

    def ping(self) -> None:
        """At each keep-alive tick: a ping, or, if the last one is still unanswered, the peer
        is gone (what uvicorn's own pings did before the stream was detached)."""
        if self._pong_due:
            self.transport.abort()
        elif self.open() and not self._closing:
            self._pong_due = True
            self.transport.write(_PING)

    def end(self, code: int, reason: str) -> None:
        """Our close frame; the connection closes when the client answers it, or after
        CLOSE_TIMEOUT."""
        if not self.open() or self._closing:
            return
        self._closing = True
        payload = code.to_bytes(2, "big") + reason.encode()[:123]
        self.transport.write(bytes((0x88, len(payload))) + payload)
        if self._buf is None:  # not reading: nothing to wait for
            self.transport.close()
        else:
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.transport.close)


def detach(conn: Connection, ring: Ring, cursor: Cursor) -> Detached | None:
    """Hand a caught-up stream's connection from the server's protocol to a `Detached` one,
    so that its ASGI task can end; None where the server's implementation is not supported,
    or the connection is not in a state to hand over (a write pending, reading paused,
    anything received and not yet read)."""
    if isinstance(conn, _Http):
        cycle = conn._cycle
        transport = cycle.transport
        proto: Any = transport.get_protocol()  # Any: its attributes are reassigned below
        if (
            not isinstance(proto, HttpToolsProtocol)
            or proto.cycle is not cycle
            or transport is not proto.transport  # the response head is still held back
            or not conn.open()
            or proto.flow.write_paused
            or proto.flow.read_paused
            or proto.pipeline
        ):
            return None
        http = DetachedHttp(transport, proto.connections, proto.tasks, ring, cursor)
        _leave_http(proto, cycle)
        return _hand_over(proto, transport, http)
    if isinstance(conn, _QueuedWebSocket) and isinstance(conn._proto, WebSocketsSansIOProtocol):
        ws_proto: Any = conn._proto
        transport = ws_proto.transport
        if (
            not conn.open()
            or ws_proto.read_paused
            or not ws_proto.queue.empty()
            or not ws_proto.writable.is_set()
            or ws_proto.frames
            or ws_proto.close_timer is not None
        ):
            return None
        ws = DetachedWebSocket(transport, ws_proto.connections, ws_proto.tasks, ring, cursor)
        ws_proto.stop_keepalive()  # the ring's keep-alive tick pings (DetachedWebSocket.ping)
        ws_proto.disconnected = True  # its send raises, its run_asgi closes only _NO_TRANSPORT
        ws_proto.transport = _NO_TRANSPORT
        ws_proto.scope.pop(SERVER_CONNECTION, None)  # no reference cycle left to collect
        return _hand_over(ws_proto, transport, ws)
    return None


def _leave_http(proto: Any, cycle: Any) -> None:
    """The server's objects for an SSE request give up its connection."""
    proto._unset_keepalive_if_required()
    stop_head_timer = getattr(proto, "_stop_head_timer", None)  # service.worker's protocol
    if stop_head_timer is not None:
        stop_head_timer()
    # uvicorn's run_asgi then returns without touching the connection
    cycle.disconnected = True
    cycle.transport = proto.transport = proto.flow._transport = _NO_TRANSPORT
    proto.parser = proto.cycle = None  # the parser refers back to the protocol
    cycle.scope.pop(SERVER_CONNECTION, None)  # the scope refers to the cycle: no cycle left


def _hand_over(proto: Any, transport: asyncio.Transport, detached: Detached) -> Detached:
    proto.connections.discard(proto)
    proto.connections.add(detached)
    transport.set_protocol(detached)
    return detached
