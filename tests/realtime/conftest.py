"""Realtime fixtures: real engines on a DuckDB file in tmp_path, the real app served by a real
uvicorn Server (an asyncio task in the test's loop; httpx's ASGITransport buffers whole
responses, so it cannot show a stream), and small SSE / WebSocket client helpers.

Users are created straight through the app's store and given a token from the app's own signer
(exactly what a login hands out): streams only verify the token, and this skips argon2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from httpx_sse import aconnect_sse
from websockets.asyncio.client import ClientConnection, connect

from service.api.app import create_app
from service.backplane.memory import MemoryBackplane
from service.config import Settings
from service.pb import duckcast_pb2 as pb
from service.realtime.ring import EncodedEvent, Ring
from service.store.engine import StoreEngine
from service.storeclient.inprocess import InProcessStoreClient
from tests.conftest import free_port
from tests.seed import seed_users
from tests.sse import EventStream

TIMEOUT = 10.0  # upper bound for anything a test waits for; never a fixed sleep


async def until(
    predicate: Callable[[], bool], within: float = TIMEOUT, what: str = "condition"
) -> None:
    """Poll `predicate` on the running loop (other tasks keep running) until it holds."""
    try:
        async with asyncio.timeout(within):
            # polling: the conditions are other components' state, with no event to wait on
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{what}: not met within {within}s") from None


# -- a store engine on a real DuckDB file ------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[StoreEngine]:
    seed_users(tmp_path / "store.duckdb")
    eng = StoreEngine(tmp_path / "store.duckdb", read_threads=2)
    eng.open()
    yield eng
    eng.close()


@pytest.fixture
def store(engine: StoreEngine) -> InProcessStoreClient:
    """Typed calls into the engine (its lifecycle belongs to the `engine` fixture)."""
    return InProcessStoreClient(engine)


# -- the real app on a real server ------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Live:
    app: FastAPI
    settings: Settings
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def user(self, username: str) -> Account:
        created = await self.app.state.store.create_user(username, "not-a-password-hash")
        return Account(created.id, username, self.app.state.signer.issue(created.id).value)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=TIMEOUT)

    @property
    def ring(self) -> Ring:
        ring: Ring = self.app.state.ring
        return ring

    @property
    def ring_seq(self) -> int:
        return self.ring.seq


@contextlib.asynccontextmanager
async def serve(
    settings: Settings,
    prepare: Callable[[FastAPI], None] | None = None,
    *,
    root_path: str = "",
    **config: Any,
) -> AsyncIterator[Live]:
    """The app (embedded store, memory backplane) served by uvicorn on a free port, under
    `uvicorn --root-path` if given; `prepare(app)` runs before the server starts, `config`
    goes to uvicorn.Config (e.g. `ws="wsproto"`, `http="h11"`)."""
    app = create_app(settings, backplane=MemoryBackplane())
    if prepare is not None:
        prepare(app)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", root_path=root_path, **config
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield Live(app, settings, port)
    finally:
        # End any stream a failing test left open (uvicorn waits for open responses), then
        # let uvicorn run the lifespan shutdown.
        app.state.ring.close()
        server.should_exit = True
        async with asyncio.timeout(TIMEOUT):
            await task


@pytest.fixture
def live_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", environment="development")


@pytest.fixture
async def live(live_settings: Settings) -> AsyncIterator[Live]:
    async with serve(live_settings) as served:
        yield served


async def create_item(http: httpx.AsyncClient, who: Account, **fields: Any) -> dict[str, Any]:
    fields.setdefault("title", "an item")
    r = await http.post("/api/items", json=fields, headers=who.headers)
    assert r.status_code == 201, r.text
    item: dict[str, Any] = r.json()
    return item


async def update_item(
    http: httpx.AsyncClient, who: Account, item_id: int, **fields: Any
) -> dict[str, Any]:
    r = await http.patch(f"/api/items/{item_id}", json=fields, headers=who.headers)
    assert r.status_code == 200, r.text
    item: dict[str, Any] = r.json()
    return item


async def delete_item(http: httpx.AsyncClient, who: Account, item_id: int) -> None:
    r = await http.delete(f"/api/items/{item_id}", headers=who.headers)
    assert r.status_code == 204, r.text


# -- SSE ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_sse(
    live: Live,
    *,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
) -> AsyncIterator[EventStream]:
    # aconnect_sse adds Accept and Cache-Control to the headers dict it is given: a copy
    async with (
        httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT, cookies=cookies) as http,
        aconnect_sse(http, "GET", "/api/events", params=params, headers=dict(headers or {})) as s,
    ):
        response = s.response
        assert response.status_code == 200, (await response.aread())[:300]
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventStream(response, TIMEOUT)


# -- writes in the background -------------------------------------------------------------


async def settled(live: Live) -> int:
    """The store's seq, once the ring has received everything up to it."""
    seq: int = await live.app.state.store.ping()
    await until(lambda: live.ring_seq >= seq, what=f"ring reaches seq {seq}")
    return seq


@contextlib.asynccontextmanager
async def writing(live: Live, who: Account) -> AsyncIterator[list[int]]:
    """Sequential creates in the background for the duration of the block; yields the list of
    committed seqs so far (the last one is the newest)."""
    committed: list[int] = []
    stop = asyncio.Event()

    async def loop() -> None:
        async with live.http() as http:
            n = 0
            while not stop.is_set():
                await create_item(http, who, title=f"bg {n}")
                committed.append(await live.app.state.store.ping())
                n += 1

    task = asyncio.create_task(loop())
    try:
        await until(lambda: len(committed) >= 3 or task.done(), what="writer started")
        yield committed
    finally:
        stop.set()
        await task


# -- WebSocket -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def ws_connect(
    live: Live, who: Account | None, **options: Any
) -> AsyncIterator[ClientConnection]:
    """/ws/items with `?token=` (browsers cannot set headers on a WebSocket) and the other
    query parameters from `params`; no compression, so frame sizes are what was sent."""
    params = dict(options.pop("params", {}))
    if who is not None:
        params["token"] = who.token
    url = f"{live.ws_url}/ws/items?{urlencode(params)}"
    async with connect(url, proxy=None, compression=None, open_timeout=TIMEOUT, **options) as ws:
        yield ws


async def recv(ws: ClientConnection) -> str | bytes:
    async with asyncio.timeout(TIMEOUT):
        return await ws.recv()


async def recv_event(ws: ClientConnection) -> pb.DomainEvent:
    frame = await recv(ws)
    assert isinstance(frame, bytes), f"expected a binary frame, got {frame!r}"
    return pb.DomainEvent.FromString(frame)


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    frame = await recv(ws)
    assert isinstance(frame, str), f"expected a text frame, got {frame!r}"
    decoded: dict[str, Any] = json.loads(frame)
    return decoded


async def subscribed(live: Live, count: int) -> None:
    """The server has registered `count` subscriptions (the handshake alone does not say so)."""
    await until(lambda: len(live.ring) == count, what=f"{count} subscribers")


class RingReader:
    """Every event appended to a ring, in order, read as a stream would (for tests of the
    ring's producer; the ring must be large enough to hold what the test writes)."""

    def __init__(self, ring: Ring, seq: int = 0) -> None:
        self.ring = ring
        self.seq = seq

    async def next_batch(self, wait: float = TIMEOUT) -> list[EncodedEvent]:
        async with asyncio.timeout(wait):
            while True:
                events = self.ring.after(self.seq, 1_000_000)
                assert events is not None, f"events after {self.seq} left the ring"
                if events:
                    self.seq = events[-1].seq
                    return events
                await self.ring.wait()
