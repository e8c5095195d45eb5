"""A stream whose response cannot start: the client went away before its first bytes.

ASGI 2.4 lets a server raise OSError from `send` once the client has gone (uvicorn raises
ClientDisconnected, an OSError, for a WebSocket; hypercorn and granian for HTTP too). A stream
that meets it while opening must end exactly as any other stream that lost its client: counted
opened once and closed once ("client"), gone from the ring and from the subscriber gauge, and
nothing raised out of the app (a server would log it as a crash and, for HTTP, try a 500).

These tests call the real app (its lifespan run by the `serve` fixture, so the ring has
started) as a small server of their own would, since uvicorn's HTTP `send` returns silently
once its client has gone: `StandIn` keeps ASGI's rules (start before body, nothing after the
end; a WebSocket is accepted before it sends) and raises OSError for every `send` from the
message the test names on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.routing import SERVER_CONNECTION
from service.config import Settings
from tests.realtime.conftest import TIMEOUT, Account, Live, serve, settled, until
from tests.realtime.test_detach import closes, commit, gauge


def opens(transport: str) -> float:
    return REGISTRY.get_sample_value("duckcast_stream_opens_total", {"transport": transport}) or 0.0


class StandIn:
    """One connection, as an ASGI server presents it; the client leaves at the message of
    type `gone_at` (and, if `body` is given, the body that starts with it)."""

    def __init__(self, gone_at: str, body: bytes = b"") -> None:
        self.gone_at = gone_at
        self.body = body
        self.gone = asyncio.Event()
        self.sent: list[Message] = []
        self.connected = False  # a WebSocket's connect message has been read

    def _leaves_at(self, message: Message) -> bool:
        if message["type"] != self.gone_at:
            return False
        data = message.get("body", message.get("bytes", message.get("text", b"")))
        return (data.encode() if isinstance(data, str) else data).startswith(self.body)

    async def send(self, message: Message) -> None:
        if self.gone.is_set() or self._leaves_at(message):
            self.gone.set()
            raise OSError("the client has gone")
        kinds = [m["type"] for m in self.sent]
        kind = message["type"]
        if kind == "http.response.body" and "http.response.start" not in kinds:
            raise RuntimeError(f"{kind} before http.response.start")
        if kind.startswith("websocket.send") and "websocket.accept" not in kinds:
            raise RuntimeError(f"{kind} before websocket.accept")
        if any(m.get("more_body") is False or m["type"] == "websocket.close" for m in self.sent):
            raise RuntimeError(f"{kind} after the response ended")
        self.sent.append(message)

    async def receive(self) -> Message:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}  # read by the WebSocket handler only
        await self.gone.wait()
        return {"type": "websocket.disconnect", "code": 1006}

    async def receive_http(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}


def scope(live: Live, kind: str, path: str, query: bytes, who: Account) -> dict[str, Any]:
    return {
        "type": kind,
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {who.token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", live.port),
        "subprotocols": [],
        "state": {},
    }


def holding_the_head(held: asyncio.Event) -> Callable[[FastAPI], None]:
    """A middleware that holds an SSE response's head until uvicorn has seen its client go."""

    class Hold:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope.get("path") != "/api/events":
                await self.app(scope, receive, send)
                return
            cycle = scope[SERVER_CONNECTION]

            async def hold(message: Message) -> None:
                if message["type"] == "http.response.start":
                    held.set()
                    await until(lambda: cycle.disconnected, what="uvicorn sees the client go")
                await send(message)

            await self.app(scope, receive, hold)

    def prepare(app: FastAPI) -> None:
        app.add_middleware(Hold)

    return prepare


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("gone_at", "body"),
    [("http.response.start", b""), ("http.response.body", b"retry:")],
    ids=["at-the-head", "at-the-connected-event"],
)
async def test_an_sse_stream_whose_response_cannot_start_ends_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, gone_at: str, body: bytes
) -> None:
    """The client is gone when the response head, or the `connected` event after it, is
    sent: the handler returns without raising, the stream is counted opened once and closed
    once (by its client), and the ring and the subscriber gauge are back where they were.
    (Run twice, a stream that never opened was finished by its tail as well: counted closed
    twice, so opens - closes, the open streams, went negative.)"""
    settings = Settings(data_dir=tmp_path / "d", environment="development")
    async with serve(settings) as live:
        alice = await live.user("alice")
        await settled(live)
        subscribers, gauge_before = len(live.ring), gauge("sse")
        opened_before, closed_before = opens("sse"), closes("sse", "client")
        server = StandIn(gone_at, body)
        async with asyncio.timeout(5):
            await live.app(
                scope(live, "http", "/api/events", b"", alice), server.receive_http, server.send
            )
        assert [m["type"] for m in server.sent] == (
            [] if gone_at == "http.response.start" else ["http.response.start"]
        )
        assert opens("sse") == opened_before + 1
        assert closes("sse", "client") == closed_before + 1
        assert len(live.ring) == subscribers
        assert gauge("sse") == gauge_before
        assert not live.ring._ending
        assert errors(caplog) == []


@pytest.mark.parametrize("wire", ["protobuf", "json"])
async def test_a_websocket_whose_client_leaves_at_its_first_event_ends_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, wire: str
) -> None:
    """The WebSocket counterpart: the handshake is answered, then the client is gone when
    its first event (a resume from seq 0) is sent. The stream subscribed before that send,
    so it must end once: counted closed once (by its client), gone from the ring and the
    gauge, its close not sent to a client that has gone, nothing raised."""
    settings = Settings(data_dir=tmp_path / "d", environment="development")
    async with serve(settings) as live:
        alice = await live.user("alice")
        await commit(live, alice.id)
        subscribers, gauge_before = len(live.ring), gauge("ws")
        opened_before, closed_before = opens("ws"), closes("ws", "client")
        server = StandIn("websocket.send")
        query = f"since=0&format={wire}".encode()
        async with asyncio.timeout(5):
            await live.app(
                scope(live, "websocket", "/ws/items", query, alice), server.receive, server.send
            )
        assert [m["type"] for m in server.sent] == ["websocket.accept"]
        assert opens("ws") == opened_before + 1
        assert closes("ws", "client") == closed_before + 1
        assert len(live.ring) == subscribers
        assert gauge("ws") == gauge_before
        assert not live.ring._ending
        assert errors(caplog) == []


async def test_an_sse_client_that_leaves_before_the_head_is_counted_closed_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under uvicorn itself: the client's socket closes while its response head is held
    (uvicorn's `send` then returns silently), and the stream still ends once, by its client,
    with nothing logged as an error by the app or by uvicorn."""
    uvicorn_log = logging.getLogger("uvicorn.error")  # it does not propagate to the root
    held = asyncio.Event()
    settings = Settings(data_dir=tmp_path / "d", environment="development")
    async with serve(settings, holding_the_head(held)) as live:
        uvicorn_log.addHandler(caplog.handler)
        try:
            alice = await live.user("alice")
            await settled(live)
            subscribers, gauge_before = len(live.ring), gauge("sse")
            opened_before, closed_before = opens("sse"), closes("sse", "client")
            _, writer = await asyncio.open_connection("127.0.0.1", live.port)
            writer.write(
                b"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n"
                % alice.token.encode()
            )
            async with asyncio.timeout(TIMEOUT):
                await held.wait()
            writer.close()
            await writer.wait_closed()
            await until(lambda: opens("sse") == opened_before + 1, what="the stream opened")
            await until(lambda: closes("sse", "client") == closed_before + 1, what="closed")
            await until(lambda: len(live.ring) == subscribers, what="the ring left")
            assert gauge("sse") == gauge_before
            assert not live.ring._ending
        finally:
            uvicorn_log.removeHandler(caplog.handler)
        assert closes("sse", "client") == closed_before + 1
    assert errors(caplog) == []
