"""Detached streams (service/api/connection.py): under uvicorn's defaults (httptools,
websockets-sansio) a caught-up stream's ASGI request ends and its connection is held by a
small protocol of the ring's. What the server's objects did for the stream must still happen:
events arrive, a disconnect is learned at once, a client's message is closed 1008, shutdown
closes with the documented code, the open-stream gauge stays exact, middleware sees the
request."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from service.api.connection import Detached, DetachedHttp, DetachedWebSocket
from service.config import Settings
from service.pb import duckcast_pb2 as pb
from service.realtime.ring import Cursor
from tests.realtime.conftest import (
    TIMEOUT,
    Account,
    Live,
    open_sse,
    recv,
    serve,
    settled,
    subscribed,
    until,
    ws_connect,
)
from tests.sse import EventStream

# what uvicorn keeps per connection and per request, freed once its streams are detached
SERVER_OBJECTS = (HttpToolsProtocol, RequestResponseCycle, WebSocketsSansIOProtocol)


def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "d", environment="development")


def gauge(transport: str) -> float:
    return REGISTRY.get_sample_value("duckcast_subscribers", {"transport": transport}) or 0.0


def closes(transport: str, reason: str) -> float:
    labels = {"transport": transport, "reason": reason}
    return REGISTRY.get_sample_value("duckcast_stream_closes_total", labels) or 0.0


def asgi_tasks() -> list[asyncio.Task[Any]]:
    """uvicorn's request tasks still running (its run_asgi coroutines)."""
    return [t for t in asyncio.all_tasks() if "run_asgi" in repr(t.get_coro())]


async def detached(live: Live, n: int = 1) -> list[Cursor]:
    """The ring's `n` subscribers, once every one is detached and parked."""
    await subscribed(live, n)
    await until(
        lambda: all(isinstance(c.conn, Detached) and c.parked for c in live.ring._cursors),
        what="detached and parked",
    )
    return list(live.ring._cursors)


@contextlib.asynccontextmanager
async def both_detached(
    live: Live, alice: Account, ws_params: dict[str, str] | None = None
) -> AsyncIterator[tuple[EventStream, ClientConnection, list[Cursor]]]:
    """An SSE and a WebSocket stream of alice's, open and both detached."""
    async with (
        open_sse(live, headers=alice.headers) as sse,
        ws_connect(live, alice, params=ws_params or {}) as ws,
    ):
        await sse.expect("connected")
        yield sse, ws, await detached(live, 2)


def stop_sweeping(live: Live) -> None:
    """No more sweeps: what a test then sees is the detached protocol's own doing."""
    live.ring._timers[1].cancel()


async def commit(live: Live, owner: int) -> int:
    await live.app.state.store.create_items(owner, [pb.ItemCreate(title="t")])
    return await settled(live)


async def test_an_idle_stream_keeps_no_asgi_request_and_still_gets_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Once caught up, an SSE and a WebSocket stream are detached: their ASGI tasks have
    returned (and uvicorn saw nothing wrong in that), the server's protocol objects are gone
    from its connections (replaced by the detached ones, so `limit_concurrency` and shutdown
    still count them), and events written by the fan-out still arrive, in order."""
    uvicorn_log = logging.getLogger("uvicorn.error")  # it does not propagate to the root
    gc.collect()
    gc.disable()
    try:
        await _idle_stream(tmp_path, caplog, uvicorn_log)
    finally:
        gc.enable()


async def _idle_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, uvicorn_log: logging.Logger
) -> None:
    async with serve(settings(tmp_path)) as live:
        uvicorn_log.addHandler(caplog.handler)  # after uvicorn's own logging configuration
        alice = await live.user("alice")
        await settled(live)
        async with both_detached(live, alice, {"format": "json"}) as (sse, ws, cursors):
            kinds = {type(c.conn) for c in cursors}
            assert kinds == {DetachedHttp, DetachedWebSocket}
            assert asgi_tasks() == []
            conns = next(iter(cursors)).conn._connections  # type: ignore[union-attr]
            assert {type(c) for c in conns} == kinds
            # freed by their reference counts, not left for a collection of cycles (but the
            # HTTP protocol that upgraded the WebSocket: under this test's asyncio loop it
            # stays reachable until the connection closes, a detached one or not)
            left = [o for o in gc.get_objects() if isinstance(o, SERVER_OBJECTS)]
            assert [type(o) for o in left] in ([], [HttpToolsProtocol])
            first = await commit(live, alice.id)
            second = await commit(live, alice.id)
            got = [(await sse.expect("item_created")).id for _ in range(2)]
            assert got == [str(first), str(second)]
            assert [(await _json(ws))["seq"] for _ in range(2)] == [first, second]
        uvicorn_log.removeHandler(caplog.handler)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == []


async def _json(ws: Any) -> dict[str, Any]:
    import orjson

    frame = await recv(ws)
    decoded: dict[str, Any] = orjson.loads(frame)
    return decoded


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_detached_stream_learns_at_once_that_its_client_left(
    tmp_path: Path, transport: str
) -> None:
    """With the ring's sweep stopped, a detached stream whose client disconnects leaves the
    ring, the subscriber gauge and uvicorn's connections at once (connection_lost), and is
    counted closed by its client."""
    async with serve(settings(tmp_path)) as live:
        alice = await live.user("alice")
        await settled(live)
        stop_sweeping(live)
        gauge_before, closed_before = gauge(transport), closes(transport, "client")
        if transport == "sse":
            async with open_sse(live, headers=alice.headers) as sse:
                await sse.expect("connected")
                (cursor,) = await detached(live)
                assert gauge(transport) == gauge_before + 1
        else:
            async with ws_connect(live, alice):
                (cursor,) = await detached(live)
                assert gauge(transport) == gauge_before + 1
        conn = cursor.conn
        assert isinstance(conn, Detached)
        await until(lambda: len(live.ring) == 0, within=1.0, what="the disconnect learned")
        await until(lambda: cursor.finished, within=1.0, what="the stream finished")
        assert gauge(transport) == gauge_before
        assert closes(transport, "client") == closed_before + 1
        assert conn not in conn._connections


async def test_a_detached_websocket_closes_1008_on_a_client_message_answers_ping_and_close(
    tmp_path: Path,
) -> None:
    """With the ring's sweep stopped: a ping is answered, a client's message closes the
    detached WebSocket with 1008 within 1 s, and a client's close is answered with its code."""
    async with serve(settings(tmp_path)) as live:
        alice = await live.user("alice")
        await settled(live)
        stop_sweeping(live)
        async with ws_connect(live, alice) as ws:
            await detached(live)
            async with asyncio.timeout(1.0):
                await (await ws.ping(b"abc"))  # the pong, with its payload
            await ws.send("hello")
            async with asyncio.timeout(1.0):
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        await until(lambda: len(live.ring) == 0, within=1.0, what="the stream ended")

        async with ws_connect(live, alice) as ws:
            await detached(live)
            async with asyncio.timeout(1.0):
                await ws.close(4321, "bye")
            rcvd = ws.protocol.close_rcvd
            assert rcvd is not None and rcvd.code == 4321
        await until(lambda: len(live.ring) == 0, within=1.0, what="the stream ended")


async def test_uvicorn_shutdown_closes_detached_streams_with_the_documented_close(
    tmp_path: Path,
) -> None:
    """uvicorn's graceful shutdown calls shutdown() on each of its connections (before the
    lifespan's ring.close()): a detached SSE stream's body ends and its connection closes; a
    detached WebSocket gets 1012."""
    async with serve(settings(tmp_path)) as live:
        alice = await live.user("alice")
        await settled(live)
        async with both_detached(live, alice) as (sse, ws, cursors):
            conns = cursors[0].conn._connections  # type: ignore[union-attr]
            for conn in list(conns):  # what uvicorn's Server.shutdown does
                conn.shutdown()
            async with asyncio.timeout(2):
                assert await sse.next() is None
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(2):
                    await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert len(live.ring) == 0
        await until(lambda: not conns, what="uvicorn's connections empty")


async def raw_ws(live: Live, token: str) -> socket.socket:
    """A WebSocket handshake on a plain socket: a client that never answers pings."""
    sock = socket.socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", live.port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(
        sock,
        (
            f"GET /ws/items?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode(),
    )
    head = b""
    async with asyncio.timeout(TIMEOUT):
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_detached_websocket_that_never_answers_a_ping_is_dropped(tmp_path: Path) -> None:
    """The ring's keep-alive tick pings a detached WebSocket (uvicorn's pings stop with its
    protocol); at the next tick, no pong means the peer is gone: the connection is aborted."""
    async with serve(settings(tmp_path)) as live:
        alice = await live.user("alice")
        await settled(live)
        sock = await raw_ws(live, alice.token)
        await detached(live)
        loop = asyncio.get_running_loop()
        live.ring._tick()
        got = b""
        async with asyncio.timeout(TIMEOUT):
            while b"\x89\x00" not in got:
                got += await loop.sock_recv(sock, 4096)
        assert len(live.ring) == 1
        live.ring._tick()
        await until(lambda: len(live.ring) == 0, within=1.0, what="the silent peer dropped")
        sock.close()


def recording(seen: list[str]) -> Callable[[FastAPI], None]:
    class Recorder:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
                return
            seen.append(f"enter {scope['type']} {scope['path']}")
            await self.app(scope, receive, send)
            seen.append(f"return {scope['type']} {scope['path']}")

    def prepare(app: FastAPI) -> None:
        app.add_middleware(Recorder)

    return prepare


async def test_a_middleware_sees_the_stream_request_and_its_call_returns_at_detach(
    tmp_path: Path,
) -> None:
    """A middleware added with add_middleware wraps every stream's request (under
    `--root-path` too); its call returns when the stream is detached, while the stream goes
    on delivering."""
    seen: list[str] = []
    async with serve(settings(tmp_path), recording(seen), root_path="/prefix") as live:
        alice = await live.user("alice")
        await settled(live)
        async with both_detached(live, alice, {"format": "json"}) as (sse, ws, _):
            await until(lambda: len(seen) == 4, what="both calls returned")
            assert sorted(seen) == [
                "enter http /prefix/api/events",
                "enter websocket /prefix/ws/items",
                "return http /prefix/api/events",
                "return websocket /prefix/ws/items",
            ]
            last = await commit(live, alice.id)
            assert (await sse.expect("item_created")).id == str(last)
            assert (await _json(ws))["seq"] == last


async def test_a_detached_stream_still_counts_against_limit_concurrency(tmp_path: Path) -> None:
    """uvicorn's `limit_concurrency` counts its connections: a detached stream is one of them
    (its protocol took the place of uvicorn's), so with a limit of 2 and one stream held, the
    next request is refused 503; once the stream has gone, it is served."""
    async with serve(settings(tmp_path), limit_concurrency=2) as live:
        alice = await live.user("alice")
        await settled(live)
        async with open_sse(live, headers=alice.headers) as sse:
            await sse.expect("connected")
            await detached(live)
            async with live.http() as http:
                assert (await http.get("/healthz")).status_code == 503
        await until(lambda: len(live.ring) == 0, what="the stream ended")
        async with live.http() as http:
            assert (await http.get("/healthz")).status_code == 200
