"""The store's outbox publisher against a real redis-server, observed by a plain redis.asyncio
pub/sub subscriber on the documented channel (what any worker sees)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.backplane.memory import MemoryBackplane
from service.backplane.redis import RedisBackplane
from service.constants import EVENTS_CHANNEL
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.store.engine import StoreEngine
from service.store.outbox import OutboxPublisher
from service.storeclient.inprocess import InProcessStoreClient
from tests.conftest import RedisServer
from tests.realtime.conftest import TIMEOUT, until
from tests.seed import seed_users


class Listener:
    def __init__(self, pubsub: aioredis.client.PubSub) -> None:
        self.pubsub = pubsub
        self.highest = 0  # the highest seq received so far

    async def next(self, within: float = TIMEOUT) -> spb.EventBatch:
        async with asyncio.timeout(within):
            while True:
                msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None and msg["type"] == "message":
                    assert msg["channel"] == EVENTS_CHANNEL.encode()
                    batch = spb.EventBatch.FromString(msg["data"])
                    self.highest = max([self.highest, *(e.seq for e in batch.events)])
                    return batch

    async def seqs_until(self, last: int, within: float = TIMEOUT) -> list[list[int]]:
        """The seqs of each message received, until one carries `last`."""
        messages: list[list[int]] = []
        while self.highest < last:
            batch = await self.next(within)
            assert batch.events, batch
            assert batch.last_seq == batch.events[-1].seq
            messages.append([e.seq for e in batch.events])
        return messages


@contextlib.asynccontextmanager
async def listening(url: str) -> AsyncIterator[Listener]:
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(EVENTS_CHANNEL)
        yield Listener(pubsub)
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


@contextlib.asynccontextmanager
async def publishing(
    engine: StoreEngine, url: str, state_file: Path
) -> AsyncIterator[OutboxPublisher]:
    backplane = RedisBackplane(url)
    publisher = OutboxPublisher(engine, backplane, state_file)
    await publisher.start()
    try:
        yield publisher
    finally:
        # Close an idle publisher: closing one in the middle of a publish can hang (see
        # test_close_while_publishing_returns), and only that test should show it.
        with contextlib.suppress(AssertionError):
            await until(lambda: publisher.published >= engine.state.last_seq, within=2)
        await publisher.close()
        await backplane.close()


def create(n: int = 1) -> list[pb.ItemCreate]:
    return [pb.ItemCreate(title=f"item {i}", priority=i % 100) for i in range(n)]


async def test_events_committed_while_redis_is_down_go_out_in_order_when_it_is_back(
    engine: StoreEngine,
    store: InProcessStoreClient,
    redis_server: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Commits made while redis-server is stopped wait in the outbox (the event log); the
    publisher keeps retrying, and once Redis is back they are published, every one, in commit
    order, and `published` (and its state file) reach the last seq; the recovery is logged."""
    caplog.set_level(logging.INFO, logger="service.store.outbox")
    state = tmp_path / "published_seq"
    async with publishing(engine, redis_server.url, state) as publisher:
        async with listening(redis_server.url) as listener:
            await store.create_items(1, create())
            assert await listener.seqs_until(1) == [[1]]

        redis_server.stop()
        item = (await store.create_items(1, create())).items[0]
        await store.update_item(1, item.id, pb.ItemUpdate(status="completed"))
        await store.delete_item(1, item.id)
        await store.create_items(1, create(3))
        last = await store.ping()
        assert last == 7

        # Wait until the publisher has failed a few times and sleeps at least 0.4 s before
        # its next try: then our subscription is in place before that try (pub/sub keeps
        # nothing for late subscribers).
        def backing_off() -> bool:
            for r in caplog.records:
                m = re.search(r"publishing events failed .* retry in ([0-9.]+)s", r.getMessage())
                if m and float(m.group(1)) >= 0.4:
                    return True
            return False

        await until(backing_off, what="publisher retrying with a long enough backoff")
        assert publisher.published == 1
        # saved within the save interval (SAVE_INTERVAL), and no further while Redis is down
        await until(lambda: state.read_text() == "1", what="state file reaches seq 1")
        assert publisher.published == 1

        redis_server.start()
        async with listening(redis_server.url) as listener:
            messages = await listener.seqs_until(last)
        assert [s for m in messages for s in m] == list(range(2, last + 1))
        await until(lambda: publisher.published == last, what="published reaches last seq")
        # the state file follows within the publisher's save interval
        await until(lambda: state.read_text() == str(last), what="state file reaches last seq")
    assert any("publishing events restored" in r.getMessage() for r in caplog.records)


async def test_one_message_per_commit_batch(
    engine: StoreEngine,
    store: InProcessStoreClient,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """A bulk create of 50 items is one commit and goes out as ONE message carrying its 50
    events (seq 1..50, last_seq 50); the next commit is the next message."""
    async with (
        listening(redis_server.url) as listener,
        publishing(engine, redis_server.url, tmp_path / "published_seq"),
    ):
        await store.create_items(1, create(50))
        batch = await listener.next()
        assert [e.seq for e in batch.events] == list(range(1, 51))
        assert batch.last_seq == 50
        assert all(e.type == pb.CREATED for e in batch.events)
        assert [e.item.title for e in batch.events] == [f"item {i}" for i in range(50)]

        await store.create_items(1, create())
        assert await listener.seqs_until(51) == [[51]]


async def test_restarted_publisher_does_not_republish(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """`published` survives a restart of the store: a new engine and publisher on the same
    data resume after what was already published, so the first message after the restart
    carries only the new commit."""
    db, state = tmp_path / "restart.duckdb", tmp_path / "published_seq"
    seed_users(db)
    engine = StoreEngine(db, read_threads=1)
    engine.open()
    try:
        store = InProcessStoreClient(engine)
        async with (
            listening(redis_server.url) as listener,
            publishing(engine, redis_server.url, state) as publisher,
        ):
            for _ in range(3):
                await store.create_items(1, create(2))
            await listener.seqs_until(6)
            await until(lambda: publisher.published == 6)
    finally:
        engine.close()
    assert state.read_text() == "6"

    engine = StoreEngine(db, read_threads=1)
    engine.open()
    try:
        store = InProcessStoreClient(engine)
        async with (
            listening(redis_server.url) as listener,
            publishing(engine, redis_server.url, state) as publisher,
        ):
            assert publisher.published == 6
            await store.create_items(1, create())
            # a re-publish of 1..6 would come first: the outbox publishes in order
            assert await listener.seqs_until(7) == [[7]]
    finally:
        engine.close()


async def test_close_while_publishing_returns(
    engine: StoreEngine,
    store: InProcessStoreClient,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """OutboxPublisher.close() returns promptly whenever it is called, also right after a
    commit while the publish of that batch is in flight (shutdown of the store, and of an
    embedded worker, awaits it). Swept over the next few event-loop turns after the commit."""
    backplane = RedisBackplane(redis_server.url)
    state = tmp_path / "published_seq"
    hung: list[int] = []
    try:
        async with listening(redis_server.url) as listener:
            # one publish first, so the state file exists (see the test below)
            async with publishing(engine, redis_server.url, state):
                await store.create_items(1, create())
                await listener.seqs_until(1)
            for turns in [t for _ in range(5) for t in range(4)]:
                publisher = OutboxPublisher(engine, backplane, state)
                await publisher.start()
                # it resumes from the state file: what a cancelled publish did not send goes out
                await listener.seqs_until(await store.ping())
                await store.create_items(1, create())  # the publish starts on this commit
                for _ in range(turns):
                    await asyncio.sleep(0)
                closing = asyncio.create_task(publisher.close())
                done, _ = await asyncio.wait({closing}, timeout=1)
                if not done:
                    hung.append(turns)
                    # the publisher task swallowed its cancellation and went back to waiting
                    # for the next commit: cancel it again so the test can clean up
                    assert publisher._task is not None
                    publisher._task.cancel()
                    await closing
                    break
    finally:
        await backplane.close()
    assert hung == [], (
        f"close() hung after {hung} loop turns: the cancellation was swallowed inside the "
        "publish (Python 3.11 asyncio.wait_for in redis-py's send_packed_command)"
    )


async def test_restart_before_the_first_publish_still_publishes_the_backlog(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Commits made while Redis is down wait in the outbox even across a restart of the store
    that happens before the publisher ever succeeded (a fresh deployment whose Redis is late):
    the restarted publisher publishes them once Redis is up. (Today `published` is persisted
    only after a successful publish, and a missing state file reads as "all published".)"""
    db, state = tmp_path / "fresh.duckdb", tmp_path / "published_seq"
    seed_users(db)
    redis_server.stop()
    engine = StoreEngine(db, read_threads=1)
    engine.open()
    try:
        store = InProcessStoreClient(engine)
        backplane = RedisBackplane(redis_server.url)
        publisher = OutboxPublisher(engine, backplane, state)
        await publisher.start()
        for _ in range(3):
            await store.create_items(1, create())
        await publisher.close()  # it is backing off between failed tries, not publishing
        await backplane.close()
        assert publisher.published == 0
    finally:
        engine.close()

    redis_server.start()
    engine = StoreEngine(db, read_threads=1)
    engine.open()
    try:
        async with (
            listening(redis_server.url) as listener,
            publishing(engine, redis_server.url, state),
        ):
            try:
                messages = await listener.seqs_until(3, within=3)
            except TimeoutError:
                pytest.fail("events committed before the restart were never published")
            assert [s for m in messages for s in m] == [1, 2, 3]
    finally:
        engine.close()


async def test_seq_seen_before_its_events_waits_for_the_wake_instead_of_spinning(
    engine: StoreEngine, store: InProcessStoreClient, tmp_path: Path
) -> None:
    """The writer thread sets the store's seq a moment before the events enter the log it
    reads, and wakes the publisher only after. A publisher woken inside that window reads no
    events: it must wait for the wake-up, not ask again at once (each answer comes without
    yielding the loop, so it would spin, holding the GIL the writer needs). The window is
    reproduced by advancing the seq the publisher sees; the spy stops a spin after 50 calls."""
    backplane = MemoryBackplane()
    publisher = OutboxPublisher(engine, backplane, tmp_path / "published_seq")
    await publisher.start()
    try:
        await store.create_items(1, create())
        await until(lambda: publisher.published == engine.state.last_seq, what="published")
        calls = 0
        real = engine.events_since

        async def spy(after: int, limit: int) -> spb.EventBatch:
            nonlocal calls
            calls += 1
            if calls > 50:
                raise RuntimeError("spinning")  # the publisher backs off: the test ends
            return await real(after, limit)

        engine.events_since = spy  # type: ignore[method-assign]
        committed = engine.state
        engine.state = replace(committed, last_seq=committed.last_seq + 1)  # seq, no events
        publisher._wake.set()
        for _ in range(20):  # loop turns enough for many retries
            await asyncio.sleep(0)
        assert calls == 1, f"asked the log {calls} times without a wake-up"

        engine.state = committed  # the window closes; a real commit wakes it
        last = (await store.create_items(1, create())).items[0]
        await until(lambda: publisher.published == engine.state.last_seq, what="published")
        assert last.id and calls == 2
    finally:
        await publisher.close()
