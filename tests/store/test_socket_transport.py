"""The worker <-> store transport: StoreServer and SocketStoreClient over real Unix and TCP
sockets. Every call answers like the in-process engine; failures surface as StoreUnavailable or
StoreTimeout within bounded time, and the client heals itself once the store is back."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from service.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    StoreTimeout,
    StoreUnavailable,
    Unauthorized,
    WriteInDoubt,
)
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.store.engine import StoreEngine
from service.store.server import StoreServer
from service.storeclient.handshake import client_handshake, store_handshake
from service.storeclient.inprocess import InProcessStoreClient
from service.storeclient.protocol import MAX_FRAME, encode_frame
from service.storeclient.socket import SocketStoreClient
from tests.conftest import free_port
from tests.seed import SEEDED_USERS, seed_users
from tests.store.conftest import STORE_KEY, Served, WriterGate, creates, settle, wait_until


async def test_every_typed_call_round_trips(served: Served) -> None:
    """Each StoreClient call over the socket returns what the engine answers in-process."""
    remote, local = served.client, InProcessStoreClient(served.engine)
    assert await remote.ping() == 0

    user = await remote.create_user("alice", "argon2-hash")
    assert (user.id, user.username) == (SEEDED_USERS + 1, "alice")
    assert user.created_at.seconds > 0
    assert await remote.get_user(user.id) == user == await local.get_user(user.id)
    record = await remote.get_user_by_name("alice")
    assert (record.user, record.password_hash) == (user, "argon2-hash")

    created = await remote.create_items(
        user.id,
        [
            pb.ItemCreate(title="a", description="d", status="completed", priority=9),
            pb.ItemCreate(title="b"),
        ],
    )
    a, b = created.items
    assert (a.id, a.title, a.description, a.status, a.priority, a.owner_id, a.version) == (
        1,
        "a",
        "d",
        "completed",
        9,
        user.id,
        1,
    )
    assert (b.status, b.priority) == ("active", 0)
    assert await remote.get_item(a.id) == a == await local.get_item(a.id)

    updated = await remote.update_item(user.id, b.id, pb.ItemUpdate(priority=50))
    assert (updated.priority, updated.version, updated.title) == (50, 2, "b")
    query = spb.ListItems(page=1, limit=10)
    page = await remote.list_items(query)
    assert [i.id for i in page.items] == [b.id, a.id] and page.seq == 3
    assert page == await local.list_items(query)
    stats = await remote.stats()
    assert (stats.total, stats.active, stats.completed, stats.avg_priority) == (2, 1, 1, 29.5)

    assert await remote.delete_item(user.id, a.id) == 4
    events = await remote.events_since(0)
    assert [(e.seq, e.type) for e in events.events] == [
        (1, pb.CREATED),
        (2, pb.CREATED),
        (3, pb.UPDATED),
        (4, pb.DELETED),
    ]
    assert events == await local.events_since(0)
    assert list((await remote.events_since(1, limit=2)).events) == list(events.events[1:3])
    assert await remote.ping() == 4


async def test_domain_errors_cross_the_socket_as_their_own_types(served: Served) -> None:
    """NotFound, Forbidden, Conflict and Invalid raised in the store raise the same classes in
    the client, with the store's message."""
    client = served.client
    user = await client.create_user("alice", "h")
    (item,) = (await client.create_items(user.id, creates("mine"))).items
    with pytest.raises(NotFound, match="item 99 not found"):
        await client.get_item(99)
    with pytest.raises(NotFound):
        await client.get_user_by_name("nobody")
    with pytest.raises(Forbidden):
        await client.update_item(1, item.id, pb.ItemUpdate(title="theirs"))  # a seeded user
    with pytest.raises(Conflict):
        await client.create_user("alice", "h")
    with pytest.raises(Invalid, match="status"):
        await client.list_items(spb.ListItems(page=1, limit=10, status="lost"))
    with pytest.raises(Invalid):
        await client.update_item(user.id, item.id, pb.ItemUpdate())
    assert await client.get_item(item.id) == item  # the connection is still good


async def test_many_concurrent_calls_share_one_connection(served: Served) -> None:
    """200 calls in flight at once on one connection each get their own answer (matched by
    request id, not by arrival order)."""
    client = served.client
    items = (await client.create_items(1, creates(*(f"item-{i}" for i in range(50))))).items
    by_id = {i.id: i for i in items}
    wanted = [items[(k * 7) % 50].id for k in range(200)]

    async def one(k: int, item_id: int) -> None:
        if k % 10 == 0:
            page = await client.list_items(spb.ListItems(page=1 + k % 5, limit=10))
            assert page.page == 1 + k % 5 and len(page.items) == 10
        elif k % 10 == 1:
            assert (await client.stats()).total == 50
        else:
            assert await client.get_item(item_id) == by_id[item_id]

    await asyncio.gather(*(one(k, i) for k, i in enumerate(wanted)))
    assert len(served.server._connections) == 1


def _requests(op: str) -> float:
    return (
        REGISTRY.get_sample_value("duckcast_store_request_duration_seconds_count", {"op": op})
        or 0.0
    )


async def test_single_creates_of_one_loop_turn_go_as_one_request_each_a_write_of_its_own(
    served: Served,
) -> None:
    """Single-item creates started in the same loop turn reach the store as one CreateMany, and
    each keeps the outcome it would have alone: a bad one fails alone (the others commit), an
    actor that does not exist is refused alone, and one Idempotency-Key used twice creates once."""
    client = served.client
    many, lone = _requests("create_many"), _requests("create_items")
    calls = [
        client.create_items_at(1, creates("a")),
        client.create_items_at(1, [pb.ItemCreate(title="")]),  # the store's own check
        client.create_items_at(10**6, creates("nobody")),
        client.create_items_at(2, creates("keyed"), "k1", b"h"),
        client.create_items_at(2, creates("keyed"), "k1", b"h"),
        client.create_items_at(1, creates("b")),
    ]
    a, empty, nobody, keyed, again, b = await asyncio.gather(*calls, return_exceptions=True)
    assert (_requests("create_many"), _requests("create_items")) == (many + 1, lone)
    assert isinstance(empty, Invalid) and isinstance(nobody, Unauthorized), (empty, nobody)
    assert not isinstance(a, BaseException) and not isinstance(b, BaseException)
    assert not isinstance(keyed, BaseException) and not isinstance(again, BaseException)
    assert [i.title for i in a[0].items] == ["a"] and [i.title for i in b[0].items] == ["b"]
    assert keyed[0] == again[0]  # the first answer again, not a second item
    assert (await client.stats()).total == 3
    last = await client.ping()
    assert all(0 < seq <= last for _, seq in (a, keyed, b))
    assert (await client.get_item(b[0].items[0].id)) == b[0].items[0]


class _StoreBeforeCreateMany(StoreEngine):
    """The engine as a store older than CreateMany sees such a request: an op it does not
    know (protobuf keeps the field as unknown, so no op is set)."""

    async def handle(
        self, req: spb.StoreRequest, committing: Callable[[], bool] | None = None
    ) -> spb.StoreResponse:
        if req.WhichOneof("op") == "create_many":
            req = spb.StoreRequest(id=req.id, deadline_us=req.deadline_us)
        return await super().handle(req, committing)


async def test_creates_reach_a_store_older_than_create_many_one_by_one(
    db_path: Path, sock_dir: Path
) -> None:
    """A worker upgraded before its store (compose's api and store are separate services):
    the store refuses the CreateMany as an unknown op without applying anything, and the
    client sends those creates, and every later one, alone."""
    seed_users(db_path)
    engine = _StoreBeforeCreateMany(db_path, read_threads=1)
    engine.open()
    url = f"unix:{sock_dir}/old.sock"
    server = StoreServer(engine, url, key=STORE_KEY)
    await server.start()
    client = SocketStoreClient(url, key=STORE_KEY)
    try:
        for round_ in range(2):
            made = await asyncio.gather(
                *(client.create_items(1, creates(f"r{round_}-{i}")) for i in range(4))
            )
            assert [m.items[0].title for m in made] == [f"r{round_}-{i}" for i in range(4)]
        assert not client.coalesce
        assert (await client.stats()).total == 8
    finally:
        await client.close()
        await server.close()
        engine.close()


async def test_writes_free_their_in_flight_slot_once_answered(
    engine: StoreEngine, sock_dir: Path
) -> None:
    """Each request holds one of its connection's `max_in_flight` slots until it is answered
    and then gives it back: more writes than slots, and failed ones too, all get answers."""
    url = f"unix:{sock_dir}/slots.sock"
    server = StoreServer(engine, url, key=STORE_KEY, max_in_flight=2)
    await server.start()
    client = SocketStoreClient(url, key=STORE_KEY)
    client.timeout = 10.0
    try:
        made = await asyncio.gather(*(client.create_items(1, creates(f"w{i}")) for i in range(6)))
        assert sorted(i.title for m in made for i in m.items) == [f"w{i}" for i in range(6)]
        for _ in range(3):
            with pytest.raises(NotFound):
                await client.delete_item(1, 10_000)
        assert (await client.create_items(1, creates("after"))).items[0].title == "after"
    finally:
        await client.close()
        await server.close()


async def test_a_store_that_is_not_there_fails_fast_and_is_not_hammered(
    engine: StoreEngine, sock_dir: Path
) -> None:
    """Nothing listening: the call raises StoreUnavailable at once (not after the timeout).
    Calls during the backoff wait for the next connection attempt instead of failing at once,
    and all of them share it: 20 callers cost one attempt. Once a store listens, a waiting
    call connects on that next attempt, without the caller retrying."""
    path = sock_dir / "store.sock"
    client = SocketStoreClient(f"unix:{path}", key=STORE_KEY)
    client.timeout = 5.0
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))  # the path exists, but nothing listens: connection refused
    server = StoreServer(engine, f"unix:{path}", key=STORE_KEY)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unreachable") as first:
            await client.ping()
        assert type(first.value) is StoreUnavailable
        assert time.monotonic() - started < 0.5
        assert client.attempts == 1

        results = await asyncio.gather(*(client.ping() for _ in range(20)), return_exceptions=True)
        assert all(type(r) is StoreUnavailable for r in results), results
        assert client.attempts == 2, "each caller made its own connection attempt"

        listener.close()
        await server.start()  # replaces the dead socket file
        assert await client.ping() == 0  # waited for the next attempt, which connected
        assert client.attempts == 3
    finally:
        listener.close()
        await client.close()
        await server.close()


async def test_a_store_that_shuts_down_answers_what_it_took_then_the_client_heals(
    served: Served, gate: WriterGate
) -> None:
    """Store shutdown drains: a write in flight when it begins is committed AND answered (a
    503 for it would make a retrying client write it twice); a request that arrives during the
    drain is refused with StoreUnavailable and not applied. Once a server listens on the same
    path again, the next call reconnects by itself."""
    client, engine = served.client, served.engine
    assert await client.ping() == 0

    gate.arm()  # the next write parks the writer after COMMIT, before it is answered
    in_flight = asyncio.create_task(client.create_user("in-flight", "h"))
    await gate.parked()
    closing = asyncio.create_task(served.server.close())
    await settle()
    with pytest.raises(StoreUnavailable, match="shutting down"):
        await client.create_user("during-drain", "h")
    assert not closing.done(), "the store stopped before answering the write it took"
    gate.release()
    assert (await in_flight).username == "in-flight"
    await closing
    with pytest.raises(StoreUnavailable):
        await client.ping()

    restarted = StoreServer(engine, served.url, key=STORE_KEY)
    await restarted.start()
    try:
        assert await client.ping() == 0  # waits for the next attempt, within its deadline
        assert (await client.get_user_by_name("in-flight")).user.id == SEEDED_USERS + 1
        with pytest.raises(NotFound):
            await client.get_user_by_name("during-drain")
        assert (await client.create_items(1, creates("after"))).items[0].id == 1
    finally:
        await client.close()
        await restarted.close()


@pytest.mark.parametrize("writes", [1, 3])  # 3: one CreateMany
async def test_a_write_that_times_out_before_the_store_commits_it_is_never_applied(
    served: Served, gate: WriterGate, writes: int
) -> None:
    """The writer is busy past the caller's deadline: the call gives up (StoreTimeout, so the
    API answers 503), and when the writer gets to the write it does not apply it, although
    the store only then reads it from its queue (the deadline travelled with the request)."""
    client = served.client
    client.timeout = 0.3
    async with gate.held():
        late = [client.create_items(1, creates(f"too late {i}")) for i in range(writes)]
        for outcome in await asyncio.gather(*late, return_exceptions=True):
            assert isinstance(outcome, StoreTimeout), outcome
    client.timeout = 5.0
    assert (await client.stats()).total == 0
    assert await client.ping() == 0
    assert (await client.create_items(1, creates("next"))).items[0].id == 1


async def test_a_write_the_store_announced_is_waited_for_past_the_deadline(
    served: Served, gate: WriterGate
) -> None:
    """Once the store has said it is committing a write, giving up at the deadline would
    answer 503 for a write that is applied: the call waits for the answer instead."""
    client = served.client
    client.timeout = 0.3
    gate.arm()  # parks the writer after COMMIT: the notice is out, the answer is not
    call = asyncio.create_task(client.create_items(1, creates("slow commit")))
    await gate.parked()
    past = time.monotonic() + 0.5
    await wait_until(lambda: time.monotonic() > past)
    assert not call.done(), call
    gate.release()
    assert [i.title for i in (await call).items] == ["slow commit"]


@pytest.mark.parametrize("writes", [1, 3])  # 3: one CreateMany
async def test_a_store_that_dies_after_announcing_a_write_leaves_it_in_doubt(
    served: Served, gate: WriterGate, writes: int
) -> None:
    """The store goes away between its Committing notice and its answer: the write may be
    applied, so the call ends in WriteInDoubt (504), never in StoreUnavailable (503)."""
    client = served.client
    gate.arm()
    doubt = [client.create_items(1, creates(f"in doubt {i}")) for i in range(writes)]
    calls = asyncio.gather(*doubt, return_exceptions=True)
    await gate.parked()
    await served.server.close(drain_timeout=0)  # no drain: the answer is lost
    for outcome in await calls:
        assert isinstance(outcome, WriteInDoubt), outcome
    gate.release()


@contextlib.asynccontextmanager
async def silent_store(path: Path) -> AsyncIterator[list[int]]:
    """A listener that accepts connections (completing the handshake) and reads requests but
    never answers. Yields the number of bytes received per connection after the handshake."""
    received: list[int] = []
    open_connections: set[asyncio.Task[None]] = set()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        open_connections.add(task)
        received.append(0)
        try:
            assert await store_handshake(reader, writer, STORE_KEY) is None
            while chunk := await reader.read(65536):
                received[-1] += len(chunk)
        finally:
            writer.close()
            open_connections.discard(task)

    server = await asyncio.start_unix_server(swallow, path=str(path))
    try:
        yield received
    finally:
        server.close()
        await server.wait_closed()
        await wait_until(lambda: not open_connections)


async def test_a_store_that_does_not_answer_times_out(sock_dir: Path) -> None:
    """A store that accepts but never replies costs the caller `timeout`, then StoreTimeout;
    the next call times out the same way rather than hanging."""
    path = sock_dir / "silent.sock"
    async with silent_store(path) as received:
        client = SocketStoreClient(f"unix:{path}", key=STORE_KEY)
        client.timeout = 0.3
        try:
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(StoreTimeout, match="did not answer"):
                    await client.ping()
                assert 0.29 <= time.monotonic() - started < 1.5
        finally:
            await client.close()
        assert received and received[0] > 0  # the request did go out


@pytest.mark.parametrize(
    "bad_bytes",
    [encode_frame(b"\xff" * 16), (MAX_FRAME + 1).to_bytes(4, "big")],
    ids=["undecodable-request", "oversized-frame"],
)
async def test_a_bad_frame_closes_only_its_own_connection(
    served: Served, gate: WriterGate, bad_bytes: bytes
) -> None:
    """A peer that sends garbage is disconnected; another client's connection, with a call in
    flight at that moment, is untouched and the server keeps serving."""
    client = served.client
    gate.arm()
    in_flight = asyncio.create_task(client.create_items(1, creates("survivor")))
    await gate.parked()

    path = served.url.removeprefix("unix:")
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        await client_handshake(reader, writer, STORE_KEY)  # a peer that passed the handshake
        writer.write(bad_bytes)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    finally:
        writer.close()
        await writer.wait_closed()

    gate.release()
    assert [i.title for i in (await in_flight).items] == ["survivor"]
    assert await client.ping() == 1
    assert len(served.server._connections) == 1


async def test_tcp_transport(engine: StoreEngine) -> None:
    """tcp:HOST:PORT serves the same protocol as a Unix socket."""
    url = f"tcp:127.0.0.1:{free_port()}"
    server = StoreServer(engine, url, key=STORE_KEY)
    await server.start()
    client = SocketStoreClient(url, key=STORE_KEY)
    try:
        (item,) = (await client.create_items(3, creates("over tcp"))).items
        assert await client.get_item(item.id) == item
        results = await asyncio.gather(*(client.get_item(item.id) for _ in range(50)))
        assert results == [item] * 50
        assert await client.ping() == 1
    finally:
        await client.close()
        await server.close()
