"""Clients for the realtime e2e tests: SSE and WebSocket subscribers that record every event
and (optionally) resume after their stream ends, concurrent writers, and polling helpers.

Everything here is asyncio: a test runs dozens of subscribers and writers in one event loop, so
nothing may block it (no time.sleep, no sync HTTP inside a test body).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import websockets
from httpx_sse import ServerSentEvent, aconnect_sse
from websockets.asyncio.client import connect as ws_connect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from service.pb import duckcast_pb2 as pb
from service.wire import item_json
from tests.sse import CHANGES, SocketSSE, aiter_events, seq

Transport = Literal["sse", "ws-json", "ws-pb"]
PASSWORD = "correct horse"
RECONNECT_BACKOFF = 0.05  # between a stream's end and the client's next attempt


async def until(
    predicate: Callable[[], bool], within: float, what: str = "condition", interval: float = 0.02
) -> None:
    """Poll `predicate` without blocking the loop; fail with `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def http_client(base_url: str, **kwargs: Any) -> httpx.AsyncClient:
    """No keep-alive: every request opens its own connection, so requests (and reconnects)
    land on whichever gunicorn worker accepts them instead of sticking to one."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(30.0, read=None),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        trust_env=False,
        **kwargs,
    )


@dataclass
class Account:
    id: int
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def signup(base_url: str, username: str) -> Account:
    async with http_client(base_url) as client:
        body = {"username": username, "password": PASSWORD}
        r = await client.post("/api/register", json=body)
        assert r.status_code == 201, r.text
        r = await client.post("/api/login", json=body)
        assert r.status_code == 200, r.text
        login = r.json()
        return Account(login["user"]["id"], username, login["token"])


async def signup_all(base_url: str, *usernames: str) -> list[Account]:
    """Register and log in concurrently (each costs two deliberately slow password hashes)."""
    return list(await asyncio.gather(*(signup(base_url, name) for name in usernames)))


async def list_page(base_url: str, account: Account, **params: Any) -> dict[str, Any]:
    async with http_client(base_url) as client:
        r = await client.get("/api/items", params={"limit": 100, **params}, headers=account.headers)
        assert r.status_code == 200, r.text
        page: dict[str, Any] = r.json()
        return page


async def list_everything(base_url: str, account: Account) -> tuple[dict[int, dict], int]:
    """All items (every page of 100) and the seq they reflect, taken while nothing is written
    (pages read at different moments are only consistent when the store is quiet)."""
    first = await list_page(base_url, account, page=1)
    items = {it["id"]: it for it in first["items"]}
    for page in range(2, first["pages"] + 1):
        more = await list_page(base_url, account, page=page)
        assert more["seq"] == first["seq"], "the store changed while listing"
        items.update({it["id"]: it for it in more["items"]})
    assert len(items) == first["total"]
    return items, first["seq"]


# -- subscribers ------------------------------------------------------------------------------


@dataclass
class Event:
    seq: int
    type: str  # created | updated | deleted | reset
    item_id: int
    item: dict[str, Any] | None  # the item; for a delete over SSE only {"id"} is sent: None
    # before an update or delete: {"owner_id", "status"} (WebSocket only; None otherwise)
    previous: dict[str, Any] | None = None


@dataclass
class Subscriber:
    """One SSE or WebSocket subscriber. It records every change event it receives and how
    each connection ended; with `resume`, it reconnects after an end with Last-Event-ID /
    ?since= set to the last seq it received (as the contract tells clients to)."""

    base_url: str
    token: str | None
    transport: Transport
    since: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    resume: bool = True
    events: list[Event] = field(default_factory=list)
    ends: list[str] = field(default_factory=list)  # "eof", "ws 1012", "overflow", "error …"
    ended_at: list[float] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # answers to refused (re)connections
    connections: int = 0
    local_port: int | None = None  # of the current connection
    open: bool = False
    task: asyncio.Task[None] | None = None

    @property
    def last_seq(self) -> int | None:
        return self.events[-1].seq if self.events else self.since

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.events]

    def start(self) -> Subscriber:
        self.task = asyncio.create_task(self._run(), name=f"{self.transport}-subscriber")
        return self

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _run(self) -> None:
        while True:
            try:
                if self.transport == "sse":
                    await self._sse()
                else:
                    await self._ws()
            except (httpx.TransportError, OSError, websockets.InvalidHandshake) as exc:
                if self.open:
                    self._ended(f"error {type(exc).__name__}: {exc}")
                else:
                    self.refused.append(f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a malformed event: keep it for the test's report
                self._ended(f"crashed {exc!r}")
                raise
            self.open = False
            if not self.resume:
                return
            await asyncio.sleep(RECONNECT_BACKOFF)

    def _ended(self, how: str) -> None:
        self.ends.append(how)
        self.ended_at.append(time.monotonic())
        self.open = False

    def _got(self, event: Event) -> None:
        self.events.append(event)

    async def _sse(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if self.last_seq is not None:
            headers["Last-Event-ID"] = str(self.last_seq)
        async with (
            http_client(self.base_url) as client,
            aconnect_sse(client, "GET", "/api/events", params=self.params, headers=headers) as es,
        ):
            r = es.response
            if r.status_code != 200:
                self.refused.append(f"{r.status_code} {(await r.aread()).decode()}")
                return
            self.local_port = r.extensions["network_stream"].get_extra_info("client_addr")[1]
            self.connections += 1
            async for event in aiter_events(es):
                self._sse_dispatch(event)
        self._ended("eof")

    def _sse_dispatch(self, event: ServerSentEvent) -> None:
        event.json()  # every event's data is JSON
        if event.event == "connected":
            self.open = True
        elif event.event in CHANGES:
            self._got(sse_change(event))
        elif event.event == "overflow":
            self.ends.append("overflow")
        else:
            raise AssertionError(f"unexpected SSE event {event}")

    async def _ws(self) -> None:
        query = {"format": "json" if self.transport == "ws-json" else "protobuf", **self.params}
        if self.token:
            query["token"] = self.token
        if self.last_seq is not None:
            query["since"] = self.last_seq
        url = f"{self.base_url.replace('http', 'ws', 1)}/ws/items?" + "&".join(
            f"{k}={v}" for k, v in query.items()
        )
        async with ws_connect(
            url, proxy=None, compression=None, max_size=None, open_timeout=10
        ) as ws:
            self.local_port = ws.local_address[1]
            self.connections += 1
            self.open = True
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        self._got(_pb_event(pb.DomainEvent.FromString(message)))
                    else:
                        self._got(_json_event(json.loads(message)))
            except websockets.ConnectionClosed:
                pass
            self._ended(f"ws {ws.close_code}")


def sse_change(event: ServerSentEvent) -> Event:
    """A change event: the item (for a delete only its id), and for a reset its seq."""
    data = event.json()
    if event.event == "reset":
        return Event(data["seq"], "reset", 0, None)
    kind = event.event.removeprefix("item_")
    return Event(seq(event), kind, data["id"], None if kind == "deleted" else data)


def _pb_event(ev: pb.DomainEvent) -> Event:
    kind = pb.EventType.Name(ev.type).lower()
    item = item_json(ev.item) if ev.HasField("item") else None
    previous = None
    if ev.HasField("previous"):
        previous = {"owner_id": ev.previous.owner_id, "status": ev.previous.status}
    item_id = ev.deleted_id if ev.type == pb.DELETED else ev.item.id
    return Event(ev.seq, kind, item_id, item, previous)


def _json_event(ev: dict[str, Any]) -> Event:
    kind = ev["type"].lower()
    item = ev["item"]
    item_id = ev["deleted_id"] if kind == "deleted" else (item["id"] if item else 0)
    return Event(ev["seq"], kind, item_id, item, ev.get("previous"))


async def all_reach(subs: list[Subscriber], seq: int, within: float) -> None:
    """Wait until every subscriber has received `seq`; on timeout, say where each one is."""
    try:
        await until(lambda: all((s.last_seq or 0) >= seq for s in subs), within)
    except AssertionError:
        behind = [
            (s.transport, s.last_seq, s.ends, s.refused[-1:])
            for s in subs
            if (s.last_seq or 0) < seq
        ]
        raise AssertionError(f"{len(behind)} subscribers short of seq {seq}: {behind}") from None


def assert_exact(sub: Subscriber, first: int, last: int) -> None:
    """Every seq from `first` to `last` once, in order: no gap, no duplicate, no reorder."""
    seqs = sub.seqs
    if seqs == list(range(first, last + 1)):
        return
    dupes = [s for s, n in Counter(seqs).items() if n > 1]
    missing = sorted(set(range(first, last + 1)) - set(seqs))
    disorder = [(a, b) for a, b in itertools.pairwise(seqs) if b <= a]
    raise AssertionError(
        f"{sub.transport} subscriber (ends={sub.ends}, connections={sub.connections}) got "
        f"{len(seqs)} events for {first}..{last}: missing {missing[:20]} ({len(missing)}), "
        f"duplicated {dupes[:20]} ({len(dupes)}), out of order {disorder[:10]}"
    )


# -- writers ----------------------------------------------------------------------------------


@dataclass
class WriteLog:
    """What the writers were answered: (op, status) counts and when each answer came."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    answered_at: list[tuple[float, str, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    def unexpected(self) -> list[tuple[str, int]]:
        ok = {"create": 201, "update": 200, "delete": 204, "lost": -1}
        return [(op, st) for (op, st) in self.statuses if ok[op] != st]


async def write_mix(
    base_url: str,
    accounts: list[Account],
    total: int,
    concurrency: int,
    log: WriteLog | None = None,
    description_size: int = 20,
    creates_only: bool = False,
    max_live: int | None = None,
    seed: int = 0,
) -> WriteLog:
    """`total` writes by `concurrency` tasks (each writing as one of `accounts`, in turn): a
    mix of creates, updates (title/status/priority) and deletes of the writer's own items.
    With `max_live`, a writer deletes rather than creates once it owns that many items."""
    log = log or WriteLog()
    remaining = [total]
    rng = random.Random(seed)

    async def one_write(client: httpx.AsyncClient, mine: list[int], n: int) -> tuple[str, int, str]:
        roll = rng.random()
        may_create = max_live is None or len(mine) < max_live
        if creates_only or len(mine) < 3 or (roll < 0.45 and may_create):
            body = {
                "title": f"w{n}-{rng.randrange(10**6)}",
                "description": "d" * description_size,
                "status": rng.choice(["active", "completed"]),
                "priority": rng.randrange(101),
            }
            r = await client.post("/api/items", json=body)
            if r.status_code == 201:
                mine.append(r.json()["id"])
            return "create", r.status_code, r.text
        if roll < 0.8:
            patch = rng.choice(
                [
                    {"title": f"t{rng.randrange(10**6)}"},
                    {"status": rng.choice(["active", "completed"])},
                    {"priority": rng.randrange(101)},
                ]
            )
            r = await client.patch(f"/api/items/{rng.choice(mine)}", json=patch)
            return "update", r.status_code, r.text
        r = await client.delete(f"/api/items/{mine.pop(rng.randrange(len(mine)))}")
        return "delete", r.status_code, r.text

    async def writer(n: int) -> None:
        account = accounts[n % len(accounts)]
        mine: list[int] = []
        async with http_client(base_url, headers=account.headers) as client:
            while remaining[0] > 0:
                remaining[0] -= 1
                try:
                    op, status, text = await one_write(client, mine, n)
                except httpx.TransportError as exc:  # the worker died mid-request
                    op, status, text = "lost", 0, repr(exc)
                log.statuses[(op, status)] += 1
                log.answered_at.append((time.monotonic(), op, status))
                if status >= 300 or status == 0:
                    log.failures.append(f"{op} -> {status} {text[:200]}")

    await asyncio.gather(*(writer(n) for n in range(concurrency)))
    return log


# -- a client that stops reading ----------------------------------------------------------------


class StalledClient:
    """An SSE or WebSocket subscriber on a raw socket that sends its request and then does not
    read, with a small receive buffer so the server's send path backs up quickly. `drain()`
    later reads what the server sent and parses it (tests/sse.py for SSE, the websockets
    sans-I/O client for WebSocket), for the test to check how the stream ended."""

    def __init__(
        self, port: int, token: str, transport: Literal["sse", "ws-pb"], since: int
    ) -> None:
        self.transport = transport
        if transport == "sse":
            headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(since)}
            self.sse = SocketSSE(port, headers, rcvbuf=4096)
            self.sock = self.sse.sock
        else:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.sock.connect(("127.0.0.1", port))
            uri = parse_uri(f"ws://127.0.0.1:{port}/ws/items?token={token}&since={since}")
            self.ws = ClientProtocol(uri)
            self.ws.send_request(self.ws.connect())
            self.sock.sendall(b"".join(self.ws.data_to_send()))
            self.sock.setblocking(False)
        self.local_port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    async def drain(self, within: float = 30.0) -> tuple[list[Event], str]:
        """Read until the server ends the stream; the events, and how it ended: "overflow"
        (SSE event), "ws <code>", or "eof" (end of response without a reason)."""
        try:
            async with asyncio.timeout(within):
                return await (self._drain_sse() if self.transport == "sse" else self._drain_ws())
        except TimeoutError:
            raise AssertionError(f"stalled {self.transport} stream did not end") from None
        finally:
            self.close()

    async def _drain_sse(self) -> tuple[list[Event], str]:
        events: list[Event] = []
        ending = "eof"
        async for event in self.sse.events():
            if event.event == "overflow":
                ending = "overflow"
            elif event.event in CHANGES:
                events.append(sse_change(event))
        return events, ending

    async def _drain_ws(self) -> tuple[list[Event], str]:
        loop = asyncio.get_running_loop()
        events: list[Event] = []
        while True:
            chunk = await loop.sock_recv(self.sock, 1 << 20)
            if chunk:
                self.ws.receive_data(chunk)
            else:
                self.ws.receive_eof()
            for ev in self.ws.events_received():
                if isinstance(ev, Frame) and ev.opcode == Opcode.BINARY:
                    events.append(_pb_event(pb.DomainEvent.FromString(ev.data)))
            if self.ws.close_rcvd is not None:
                return events, f"ws {self.ws.close_rcvd.code}"
            if not chunk:
                return events, "eof"
