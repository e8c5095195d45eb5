"""Streams as cursors over the worker's ring, at their seams: worker start-up, a client ahead
of the worker, the replay/live seam under writes, stalled readers with no traffic, large and
concurrent replays, and the server hooks under every uvicorn implementation.

Gates, not sleeps: the relay's first ping and the ring's appends are held by asyncio.Events."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from httpx_sse import EventSource, ServerSentEvent
from prometheus_client import REGISTRY
from websockets.exceptions import ConnectionClosed

from service.api.connection import Detached
from service.api.routes import events
from service.config import Settings
from service.pb import duckcast_pb2 as pb
from service.realtime.ring import WRITE_BYTES, Cursor, Ring
from tests.realtime.conftest import (
    TIMEOUT,
    Live,
    create_item,
    open_sse,
    recv,
    recv_event,
    serve,
    settled,
    until,
    writing,
    ws_connect,
)
from tests.sse import CHANGES, SocketSSE, iter_events, seq


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "d", environment="development", **overrides)


def gate_first_ping(app: FastAPI) -> asyncio.Event:
    """The relay's first store ping (how it learns the store's seq; the first ping of all,
    made while the server starts) waits for the gate."""
    gate = asyncio.Event()
    store = app.state.store
    real = store.ping
    calls = 0

    async def ping() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
        return int(await real())

    store.ping = ping
    return gate


async def commit(live: Live, owner: int, n: int, description: str = "") -> int:
    for i in range(n):
        await live.app.state.store.create_items(
            owner, [pb.ItemCreate(title=f"c{i}", description=description)]
        )
    seq: int = await live.app.state.store.ping()
    return seq


async def change_seqs(events: AsyncIterator[ServerSentEvent], last: int) -> list[int]:
    """The seqs of the change events read until seq `last` (or the end of the stream); no JSON
    is parsed, so megabytes stream fast."""
    seqs: list[int] = []
    async for event in events:
        if event.event in CHANGES:
            seqs.append(seq(event))
            if seqs[-1] >= last:
                break
    return seqs


def resuming(live: Live, token: str, since: int, rcvbuf: int | None = None) -> SocketSSE:
    """An SSE client on a socket of its own (optionally with a tiny receive buffer), reading
    only when the test iterates its events."""
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(since)}
    return SocketSSE(live.port, headers, rcvbuf)


# -- start-up ---------------------------------------------------------------------------------


async def test_resume_during_worker_start_up_gets_every_event(tmp_path: Path) -> None:
    """Until the relay has learned the store's seq, SSE answers 503 with Retry-After and a
    WebSocket closes 1013; then a client resuming from below the relay's start (events
    committed while the worker started) gets every one of them from the log, then live ones."""
    gate = asyncio.Event()

    def prepare(app: FastAPI) -> None:
        nonlocal gate
        gate = gate_first_ping(app)

    async with serve(settings(tmp_path), prepare) as live:
        alice = await live.user("alice")
        before = await commit(live, alice.id, 10)
        async with live.http() as http:
            r = await http.get("/api/events", headers=alice.headers)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "1"
            # and the worker says it is not ready (README, Health)
            r = await http.get("/readyz")
            assert r.status_code == 503, r.text
            assert r.json() == {
                "status": "unavailable",
                "reasons": ["events: event relay not started"],
            }
            assert r.headers["retry-after"] == "1"
        async with ws_connect(live, alice) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert len(live.ring) == 0

        gate.set()
        await until(lambda: live.ring.started, what="the relay started")
        async with live.http() as http:
            assert (await http.get("/readyz")).json() == {"status": "ready"}
        since = before - 5
        async with open_sse(live, headers={"Last-Event-ID": str(since), **alice.headers}) as sse:
            await sse.expect("connected")
            async with live.http() as http:
                await create_item(http, alice, title="live")
            last = await settled(live)
            got = await sse.changes_until(last)
        assert [seq(e) for e in got] == list(range(since + 1, last + 1))


async def test_resume_ahead_of_the_worker_waits_for_it_and_skips_what_it_had(
    tmp_path: Path,
) -> None:
    """A client resuming from a seq this worker's ring has not reached (another worker already
    delivered it) receives nothing up to it and everything after, once the ring catches up;
    a seq the store never issued gets `reset` at once instead of waiting forever."""
    async with serve(settings(tmp_path)) as live:
        alice = await live.user("alice")
        head = await settled(live)
        # The relay waits in ring.paced() after each message: hold it there after the first.
        gate = asyncio.Event()
        ring = live.ring
        paced = ring.paced

        async def held() -> None:
            await gate.wait()
            await paced()

        ring.paced = held  # type: ignore[method-assign]
        await commit(live, alice.id, 1)
        await until(lambda: ring.seq == head + 1, what="the first event in the ring")
        store_seq = await commit(live, alice.id, 5)
        ahead = head + 3
        async with open_sse(live, headers={"Last-Event-ID": str(ahead), **alice.headers}) as sse:
            await sse.expect("connected")
            await until(lambda: len(ring) == 1, what="subscribed")
            assert ring.seq == head + 1  # the client is ahead of this worker
            gate.set()
            got = await sse.changes_until(store_seq)
            assert [seq(e) for e in got] == list(range(ahead + 1, store_seq + 1))

        never = store_seq + 1000
        async with open_sse(live, headers={"Last-Event-ID": str(never), **alice.headers}) as sse:
            await sse.expect("connected")
            reset = await sse.expect("reset")
            assert seq(reset) == store_seq


async def test_replay_live_seam_under_concurrent_writes_no_gap_no_duplicate(
    tmp_path: Path,
) -> None:
    """With a ring of 8 events and writes running, clients resuming from points below the ring
    (paging the log), inside it, and at its head each receive exactly since+1..final."""
    async with serve(settings(tmp_path, stream_ring_events=8)) as live:
        alice = await live.user("alice")
        start = await commit(live, alice.id, 40)
        await settled(live)
        async with writing(live, alice) as committed:
            resumes = [0, start - 30, start - 4, start, committed[-1]]
            async with contextlib.AsyncExitStack() as stack:
                readers = [
                    await stack.enter_async_context(
                        open_sse(live, headers={"Last-Event-ID": str(s), **alice.headers})
                    )
                    for s in resumes
                ]
                await until(lambda: len(committed) >= 30, what="30 more writes")
                final = committed[-1]
                for since, sse in zip(resumes, readers, strict=True):
                    await sse.expect("connected")
                    got = await sse.changes_until(final)
                    assert [seq(e) for e in got] == list(range(since + 1, final + 1)), since


# -- stalled readers ----------------------------------------------------------------------------


async def fill_until_stalled(live: Live, cursor: Callable[[], Cursor]) -> None:
    """Large commits until the stream's send is blocked and its cursor has left the ring."""
    ring: Ring = live.ring
    for _ in range(400):
        c = cursor()
        if c.sending and c.seq < ring.first - 1:
            return
        await live.app.state.store.create_items(
            1, [pb.ItemCreate(title="big", description="x" * 9000) for _ in range(8)]
        )
        await settled(live)
    raise AssertionError("the stalled stream never blocked behind the ring")


async def only_cursor(live: Live) -> Cursor:
    await until(lambda: len(live.ring) == 1, what="one subscriber")
    (cursor,) = live.ring._cursors
    return cursor


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_stalled_reader_dropped_within_the_bound_with_no_new_events(
    tmp_path: Path, transport: str
) -> None:
    """A client that stops reading, once its send is blocked and its position has left the
    ring, is dropped within stall_seconds plus one sweep although NOTHING is published after
    that moment (the sweep is a timer, not a side effect of publishing); when it reads again
    it finds an in-order prefix, then `event: overflow` (SSE) or close 4008 (WebSocket)."""
    stall = 0.5
    async with serve(settings(tmp_path, stream_ring_events=20, stream_stall_seconds=stall)) as live:
        alice = await live.user("alice")
        start = await settled(live)
        if transport == "sse":
            sse = resuming(live, alice.token, start, rcvbuf=4096)
            cursor = await only_cursor(live)
            await until(lambda: isinstance(cursor.conn, Detached), what="detached first")
            await fill_until_stalled(live, lambda: cursor)
            quiet = time.monotonic()
            await until(lambda: cursor.reason is not None, within=5, what="stalled SSE dropped")
            assert time.monotonic() - quiet < stall + 0.5
            assert cursor.reason == "overflow"
            assert await live.app.state.store.ping() == live.ring.seq  # nothing new arrived
            async with asyncio.timeout(TIMEOUT):
                events = [event async for event in sse.events()]
            sse.close()
            assert events[-1].event == "overflow", events[-3:]
            seqs = [seq(e) for e in events if e.event in CHANGES]
            assert seqs == list(range(start + 1, start + 1 + len(seqs)))
        else:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live.port))
            async with ws_connect(live, alice, sock=sock, max_queue=1) as ws:
                cursor = await only_cursor(live)
                await until(lambda: isinstance(cursor.conn, Detached), what="detached first")
                await fill_until_stalled(live, lambda: cursor)
                quiet = time.monotonic()
                await until(lambda: cursor.reason is not None, within=5, what="stalled WS dropped")
                assert time.monotonic() - quiet < stall + 0.5
                assert cursor.reason == "overflow"
                seqs: list[int] = []
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        seqs.append((await recv_event(ws)).seq)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008
                assert seqs == list(range(start + 1, start + 1 + len(seqs)))


# -- direct writes --------------------------------------------------------------------------------


async def open_raw_sse(live: Live, token: str, since: int | None = None) -> socket.socket:
    """`GET /api/events` on a plain socket, for tests of the bytes themselves (HTTP chunk
    sizes, comments), which an SSE parser hides."""
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live.port))
    resume = f"Last-Event-ID: {since}\r\n" if since is not None else ""
    sock.send(
        f"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"{resume}\r\n".encode()
    )
    return sock


def change_ids(body: bytes) -> list[int]:
    """The seqs of the change events in an SSE body read so far (httpx-sse parses it; an
    event cut off at the end is not dispatched)."""
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)
    return [seq(e) for e in iter_events(EventSource(response)) if e.event in CHANGES]


async def read_chunks(sock: socket.socket, last: int) -> tuple[list[int], list[int]]:
    """The HTTP chunk sizes of an SSE response (each is one transport write of the server)
    and the `id:` seqs in them, until `last`."""
    loop = asyncio.get_running_loop()
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += await loop.sock_recv(sock, 65536)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower(), head
    sizes: list[int] = []
    body = b""
    async with asyncio.timeout(TIMEOUT * 3):
        while not (ids := change_ids(body)) or ids[-1] < last:
            while b"\r\n" not in buf:
                buf += await loop.sock_recv(sock, 65536)
            line, rest = buf.split(b"\r\n", 1)
            size = int(line, 16)
            while len(rest) < size + 2:
                rest += await loop.sock_recv(sock, 1 << 20)
            sizes.append(size)
            body += rest[:size]
            buf = rest[size + 2 :]
    return sizes, ids


async def test_a_burst_reaches_a_parked_sse_stream_in_writes_of_bounded_size(
    tmp_path: Path,
) -> None:
    """A parked SSE stream's events go out in one HTTP chunk per write (one transport write),
    and no write carries more than WRITE_BYTES plus one event, however many events a wake-up
    brings (here ~1 MB at once): a socket's buffer grows by one bounded write before its
    high-water mark stops the fan-out. Every event arrives once, in order."""
    async with serve(settings(tmp_path)) as live:
        alice = await live.user("alice")
        start = await settled(live)
        sock = await open_raw_sse(live, alice.token, start)
        cursor = await only_cursor(live)
        await until(lambda: cursor.parked is not None, what="the stream parked")
        await live.app.state.store.create_items(
            alice.id, [pb.ItemCreate(title=f"b{i}", description="x" * 9000) for i in range(100)]
        )
        last = await settled(live)
        sizes, ids = await read_chunks(sock, last)
        sock.close()
        assert ids == list(range(start + 1, last + 1))
        assert max(sizes) <= WRITE_BYTES + 10_000, sizes
        assert len(sizes) < 10, sizes  # batched: not one write per event


async def test_a_parked_sse_stream_gets_keepalives_from_the_fan_out(live: Live) -> None:
    """The ring's keep-alive tick reaches a parked SSE stream as a comment, written by the
    fan-out (the stream's coroutine stays parked); the app's tick comes at least every 30 s
    (README, Change streams: proxies close connections idle for longer)."""
    assert live.ring._keepalive <= 30
    alice = await live.user("alice")
    await settled(live)
    sock = await open_raw_sse(live, alice.token)
    cursor = await only_cursor(live)
    await until(lambda: cursor.parked is not None, what="the stream parked")
    parked = cursor.parked
    live.ring._tick()
    loop = asyncio.get_running_loop()
    raw = b""
    async with asyncio.timeout(TIMEOUT):
        while b": keep-alive" not in raw:
            raw += await loop.sock_recv(sock, 65536)
    assert cursor.parked is parked
    sock.close()


# -- replay cost ----------------------------------------------------------------------------------

EMOJI_40K = "\U0001f986" * 10_000  # the largest description the store accepts: 40 kB of UTF-8


async def big_log(live: Live, owner: int, mib: int) -> int:
    """About `mib` MiB of events (40 kB each) in the store's log."""
    n = mib * 1024 * 1024 // 40_000
    for i in range(0, n, 50):
        await live.app.state.store.create_items(
            owner,
            [pb.ItemCreate(title=f"b{j}", description=EMOJI_40K) for j in range(i, min(n, i + 50))],
        )
    return await settled(live)


@contextlib.contextmanager
def python_peak() -> Any:
    """Peak Python memory (tracemalloc) over the block, in MiB, as `box[0]`."""
    box = [0.0]
    tracemalloc.start()
    try:
        yield box
    finally:
        box[0] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()


async def test_a_100_mb_replay_is_paged_in_order_within_a_memory_bound(tmp_path: Path) -> None:
    """Resuming from 0 over a 100 MB log (2,600 events of 40 kB: an answer over the store's
    64 MiB frame if asked in one call) delivers every event in order while the worker's
    Python memory peaks under 16 MiB (measured: 6): pages are bounded by bytes, not only by
    count (1,000-event pages peak near 40)."""
    async with serve(settings(tmp_path, stream_ring_events=100)) as live:
        alice = await live.user("alice")
        last = await big_log(live, alice.id, 100)
        sse = resuming(live, alice.token, 0)
        with python_peak() as peak:
            async with asyncio.timeout(TIMEOUT * 6):
                ids = await change_seqs(sse.events(), last)
        sse.close()
        assert ids == list(range(1, last + 1))
        assert peak[0] < 16, f"replay peaked at {peak[0]:.0f} MiB of Python memory"


async def test_100_clients_resuming_from_0_at_once_share_the_log_pages(tmp_path: Path) -> None:
    """100 clients resuming from 0 at the same moment over a 4 MB log get every event in order,
    and the worker's Python memory peaks under 100 MiB (measured: 58; ~400 unshared): one
    store call per page, shared, not one copy per client."""
    async with serve(settings(tmp_path, stream_ring_events=10)) as live:
        alice = await live.user("alice")
        last = await big_log(live, alice.id, 4)
        calls = 0
        store = live.app.state.store
        real = store.events_since

        async def counted(after: int, limit: int = 0) -> Any:
            nonlocal calls
            calls += 1
            return await real(after, limit)

        store.events_since = counted
        with python_peak() as peak:
            clients = [resuming(live, alice.token, 0) for _ in range(100)]
            async with asyncio.timeout(TIMEOUT * 6):
                results = await asyncio.gather(*(change_seqs(c.events(), last) for c in clients))
        for c in clients:
            c.close()
        for ids in results:
            assert ids == list(range(1, last + 1))
        assert calls < 20, f"{calls} store calls for 100 replays of one log"
        assert peak[0] < 100, f"100 replays peaked at {peak[0]:.0f} MiB of Python memory"


# -- server hooks under every uvicorn implementation ---------------------------------------------

WS_IMPLS = ["websockets", "websockets-sansio", "wsproto"]
HTTP_IMPLS = ["h11", "httptools"]


# uvicorn's `websockets` (legacy) implementation is deprecated, still the one `auto` may pick
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
@pytest.mark.parametrize("http", HTTP_IMPLS)
@pytest.mark.parametrize("ws", WS_IMPLS)
async def test_a_client_message_closes_1008_within_a_second(
    tmp_path: Path, ws: str, http: str
) -> None:
    """Clients have nothing to say on /ws/items: one message is closed with 1008 within 1 s
    under every uvicorn WebSocket implementation, with no event to wake the stream; a
    client that disconnects (SSE or WebSocket) leaves the ring within a second too."""
    async with serve(settings(tmp_path), ws=ws, http=http) as live:
        alice = await live.user("alice")
        await settled(live)
        async with ws_connect(live, alice) as sock:
            await until(lambda: len(live.ring) == 1, what="subscribed")
            await sock.send("hello")
            sent = time.monotonic()
            with pytest.raises(ConnectionClosed) as closed:
                await recv(sock)
            assert time.monotonic() - sent < 1.0
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert len(live.ring) == 0

        async with ws_connect(live, alice):
            await until(lambda: len(live.ring) == 1, what="subscribed")
        await until(lambda: len(live.ring) == 0, within=1.0, what="ws disconnect noticed")
        async with open_sse(live, headers=alice.headers) as sse:
            await sse.expect("connected")
            await until(lambda: len(live.ring) == 1, what="subscribed")
        await until(lambda: len(live.ring) == 0, within=1.0, what="sse disconnect noticed")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated")
@pytest.mark.parametrize(
    ("http", "ws", "parks"),
    [
        ("httptools", "websockets-sansio", True),
        ("httptools", "wsproto", True),
        ("h11", "websockets", False),
    ],
)
async def test_events_arrive_in_order_whether_streams_park_or_send(
    tmp_path: Path, http: str, ws: str, parks: bool
) -> None:
    """SSE, WebSocket JSON and WebSocket protobuf subscribers get every event once, in order,
    whether the ring's fan-out writes their frames to the transport (httptools; sansio and
    wsproto WebSockets: the streams park) or each stream writes through ASGI `send` (h11,
    legacy websockets: they never park); events committed one at a time and five at once."""
    async with serve(settings(tmp_path), ws=ws, http=http) as live:
        alice = await live.user("alice")
        start = await settled(live)
        async with (
            open_sse(live, headers=alice.headers) as sse,
            ws_connect(live, alice, params={"format": "json"}) as wsj,
            ws_connect(live, alice) as wsp,
        ):
            await sse.expect("connected")
            await until(lambda: len(live.ring) == 3, what="three subscribers")
            if parks:
                await until(lambda: len(live.ring._parked) == 3, what="three parked")
            for _ in range(3):  # one at a time, then five in one commit
                await commit(live, alice.id, 1)
                await settled(live)
            last = await commit(live, alice.id, 5)
            expected = list(range(start + 1, last + 1))
            got_sse = [seq(e) for e in await sse.changes_until(last) if e.event in CHANGES]
            assert got_sse == expected
            got_json = [orjson.loads(await recv(wsj))["seq"] for _ in expected]
            got_proto = [(await recv_event(wsp)).seq for _ in expected]
            assert got_json == expected and got_proto == expected
            assert len(live.ring._parked) == (3 if parks else 0)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_stream_metrics_are_observed(live: Live) -> None:
    """Opening, delivering to and closing a stream move duckcast_stream_opens_total,
    duckcast_deliveries_total, duckcast_event_delivery_lag_seconds (sampled: once per fan-out
    for a parked stream, one write in 16 for a stream's own writes, so 16 separate live writes
    observe at least once) and duckcast_stream_closes_total."""
    alice = await live.user("alice")
    await settled(live)
    before = {
        "opens": sample("duckcast_stream_opens_total", transport="sse"),
        "deliveries": sample("duckcast_deliveries_total", transport="sse"),
        "lag": sample("duckcast_event_delivery_lag_seconds_count", transport="sse"),
        "closes": sample("duckcast_stream_closes_total", transport="sse", reason="client"),
    }
    async with open_sse(live, headers=alice.headers) as sse, live.http() as http:
        await sse.expect("connected")
        for n in range(16):  # one at a time: 16 socket writes
            await create_item(http, alice, title=f"m{n}")
            await sse.expect("item_created")
    await until(lambda: len(live.ring) == 0, what="the stream closed")
    assert sample("duckcast_stream_opens_total", transport="sse") == before["opens"] + 1
    assert sample("duckcast_deliveries_total", transport="sse") == before["deliveries"] + 16
    assert sample("duckcast_event_delivery_lag_seconds_count", transport="sse") > before["lag"]
    closes = sample("duckcast_stream_closes_total", transport="sse", reason="client")
    assert closes == before["closes"] + 1


async def test_a_websocket_stream_holds_no_handshake_headers(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under websockets-sansio (uvicorn's default) an open /ws/items stream that is not
    detached (here: detaching refused) does not keep the handshake's request and response
    objects (their headers, ~2 KB per subscriber)."""
    monkeypatch.setattr(events, "detach", lambda *args: None)
    alice = await live.user("alice")
    await settled(live)
    async with ws_connect(live, alice):
        cursor = await only_cursor(live)
        await until(lambda: cursor.parked is not None, what="parked")
        proto = cursor.conn._proto  # type: ignore[union-attr]
        assert type(proto).__name__ == "WebSocketsSansIOProtocol"
        assert proto.request is None and proto.response is None
