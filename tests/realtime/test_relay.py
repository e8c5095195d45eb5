"""The relay's gap repair: whatever the backplane loses, the ring still gets every committed
event once, in seq order, because the store's event log (not the backplane) is the truth.

The store is a real StoreEngine on DuckDB; nothing publishes automatically (no OutboxPublisher),
so each test decides exactly which batches the backplane carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.backplane import Backplane
from service.backplane.memory import MemoryBackplane
from service.backplane.redis import RedisBackplane
from service.metrics import RELAY_INBOX_OVERFLOWS, RELAY_RESTARTS, RELAY_SEQ
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.realtime.relay import EventRelay
from service.realtime.ring import Ring
from service.store.engine import StoreEngine
from service.storeclient.inprocess import InProcessStoreClient
from tests.conftest import RedisServer
from tests.realtime.conftest import TIMEOUT, RingReader, until

NEVER = 3600.0  # a poll interval that never fires during a test: isolates the other paths


@contextlib.asynccontextmanager
async def relaying(
    backplane: Backplane, store: InProcessStoreClient, poll_interval: float = NEVER
) -> AsyncIterator[tuple[EventRelay, Ring, RingReader]]:
    ring = Ring(max_events=100_000)
    sub = RingReader(ring)
    relay = EventRelay(backplane, store, ring, poll_interval=poll_interval)
    await relay.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            await relay.started.wait()
        yield relay, ring, sub
    finally:
        await relay.close()


async def write(store: InProcessStoreClient, n: int) -> int:
    """`n` committed changes (creates and updates); returns the last seq."""
    for i in range(n):
        if i % 3 == 2:
            await store.update_item(1, 1, pb.ItemUpdate(priority=i % 100))
        else:
            await store.create_items(1, [pb.ItemCreate(title=f"w{i}")])
    return await store.ping()


async def batch(store: InProcessStoreClient, after: int, upto: int) -> bytes:
    """The backplane message the outbox would send for the events (after, upto]."""
    got = await store.events_since(after, upto - after)
    events = [e for e in got.events if e.seq <= upto]
    assert [e.seq for e in events] == list(range(after + 1, upto + 1))
    return spb.EventBatch(events=events, last_seq=upto).SerializeToString()


async def received_until(sub: RingReader, last: int, got: list[int]) -> list[int]:
    async with asyncio.timeout(TIMEOUT):
        while not got or got[-1] < last:
            got.extend(ev.seq for ev in await sub.next_batch(TIMEOUT))
    return got


async def test_gap_in_a_later_batch_is_repaired_from_the_store(
    store: InProcessStoreClient,
) -> None:
    """Events committed but never published (1..5) are fetched from the store's log and
    delivered before a later published batch (6..8) that revealed the gap; a published batch
    that was already delivered, in whole or in part, is dropped; the ring sees 1..N once, in
    order."""
    bp = MemoryBackplane()
    async with relaying(bp, store) as (_, ring, sub):
        assert ring.seq == 0
        await write(store, 5)  # lost: never published
        last = await write(store, 3)
        await bp.publish(await batch(store, 5, last))
        got = await received_until(sub, last, [])
        assert got == list(range(1, last + 1))

        # duplicates: the same batch again, and one overlapping the delivered range
        await bp.publish(await batch(store, 5, last))
        await bp.publish(await batch(store, 0, last))
        newest = await write(store, 2)
        await bp.publish(await batch(store, last - 1, newest))  # overlaps by 1
        await bp.publish(await batch(store, last, newest))  # exact duplicate
        await received_until(sub, newest, got)
        # a marker: anything duplicated would have been delivered before it
        marker = await write(store, 1)
        await bp.publish(await batch(store, newest, marker))
        await received_until(sub, marker, got)
        assert got == list(range(1, marker + 1))
        assert ring.seq == marker


async def test_periodic_poll_delivers_what_was_never_published(
    store: InProcessStoreClient,
) -> None:
    """With nothing published at all (a silently dead subscription), the relay's periodic ping
    notices the store is ahead and delivers every committed event, once, in order."""
    bp = MemoryBackplane()
    async with relaying(bp, store, poll_interval=0.05) as (_, ring, sub):
        first = await write(store, 7)
        got = await received_until(sub, first, [])
        last = await write(store, 5)
        await received_until(sub, last, got)
        assert got == list(range(1, last + 1))
        # the poll keeps running and must not deliver anything twice
        marker = await write(store, 1)
        await received_until(sub, marker, got)
        assert got == list(range(1, marker + 1))
        assert ring.seq == marker


async def test_resubscribe_repairs_what_pubsub_dropped(
    store: InProcessStoreClient, redis_server: RedisServer
) -> None:
    """Events committed while Redis was down (so never seen on pub/sub) are delivered as soon
    as the subscription comes back and yields RESUBSCRIBED, before anything published after,
    with no periodic poll to help."""
    bp = RedisBackplane(redis_server.url)
    try:
        async with relaying(bp, store) as (_, ring, sub):
            await until(lambda: bp.live, what="subscribed")
            before = await write(store, 2)
            await bp.publish(await batch(store, 0, before))
            got = await received_until(sub, before, [])

            redis_server.stop()
            await until(lambda: not bp.live, what="subscription lost")
            during = await write(store, 6)  # nobody can publish these
            redis_server.start()
            # The repair needs no help from a publish: RESUBSCRIBED alone brings them.
            await received_until(sub, during, got)
            assert got == list(range(1, during + 1))

            after = await write(store, 2)
            for attempt in range(5):  # the first publish may hit the pool's dead connection
                try:
                    await bp.publish(await batch(store, during, after))
                    break
                except Exception:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.05)
            await received_until(sub, after, got)
            assert got == list(range(1, after + 1))
            assert ring.seq == after
    finally:
        await bp.close()


async def test_close_returns_promptly_while_subscribing(
    store: InProcessStoreClient, redis_server: RedisServer
) -> None:
    """EventRelay.close() (a worker's shutdown awaits it) returns promptly whenever it is
    called, also in the first event-loop turns after start, while the Redis subscription is
    being set up (as after every reconnect). Swept over those turns."""
    hung: list[int] = []
    for turns in [t for _ in range(3) for t in range(12)]:
        backplane = RedisBackplane(redis_server.url)
        relay = EventRelay(backplane, store, Ring(), poll_interval=NEVER)
        await relay.start()
        for _ in range(turns):
            await asyncio.sleep(0)
        closing = asyncio.create_task(relay.close())
        done, _ = await asyncio.wait({closing}, timeout=1)
        if not done:
            hung.append(turns)
            # a task swallowed its cancellation and carried on: cancel again to clean up
            for task in relay._tasks:
                task.cancel()
            await closing
        await backplane.close()
        if hung:
            break
    assert hung == [], (
        f"close() hung after {hung} loop turns: the cancellation was swallowed inside the "
        "subscription (Python 3.11 asyncio.wait_for in redis-py's send_packed_command)"
    )


def sample(metric: Any, *labels: str) -> float:
    value: float = (metric.labels(*labels) if labels else metric)._value.get()
    return value


async def test_inbox_overflow_drops_payloads_and_repairs_from_the_log(
    store: InProcessStoreClient,
) -> None:
    """With an inbox of 2 messages and 10 arriving at once, the relay keeps at most 2, drops
    the rest, counts the overflow, and delivers every event anyway, once and in order, from
    the store's log (no poll to help)."""
    bp = MemoryBackplane()
    ring = Ring(max_events=100_000)
    sub = RingReader(ring)
    relay = EventRelay(bp, store, ring, poll_interval=NEVER, inbox=2)
    overflows = sample(RELAY_INBOX_OVERFLOWS)
    await relay.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            await relay.started.wait()
        await until(lambda: relay._inbox.empty(), what="first repair done")
        payloads = []
        for _ in range(10):
            seq = await store.ping()
            payloads.append(await batch(store, seq, await write(store, 1)))
        for payload in payloads:  # all queued at the backplane before the pump runs
            await bp.publish(payload)
        last = await store.ping()
        got = await received_until(sub, last, [])
        assert got == list(range(1, last + 1))
        assert sample(RELAY_INBOX_OVERFLOWS) > overflows
        assert relay._inbox.maxsize == 2
        assert sample(RELAY_SEQ, "memory") == last == ring.seq
    finally:
        await relay.close()


class FailingOnce(MemoryBackplane):
    """A backplane whose first subscription fails with an unexpected error."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    async def subscribe(self) -> AsyncIterator[bytes | None]:
        self.attempts += 1
        if self.attempts == 1:
            raise RuntimeError("backplane bug")
        async for payload in super().subscribe():
            yield payload


class PingFailsOnce(InProcessStoreClient):
    def __init__(self, engine: StoreEngine) -> None:
        super().__init__(engine)
        self.failed = False

    async def ping(self) -> int:
        if not self.failed:
            self.failed = True
            raise RuntimeError("store client bug")
        return await super().ping()


async def test_failed_tasks_are_logged_and_restarted(
    engine: StoreEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error in the pump (the backplane's subscription) and in the relay's run
    (the store's first ping) is logged with its traceback, counted, and the task restarted:
    the relay starts and delivers what is published afterwards."""
    caplog.set_level(logging.ERROR, logger="service.realtime.relay")
    store = PingFailsOnce(engine)
    bp = FailingOnce()
    restarts = {t: sample(RELAY_RESTARTS, t) for t in ("backplane-pump", "event-relay")}
    ring = Ring(max_events=100_000)
    sub = RingReader(ring)
    relay = EventRelay(bp, store, ring, poll_interval=NEVER)
    await relay.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            await relay.started.wait()
        await until(lambda: bp.attempts == 2 and bool(bp._queues), what="pump restarted")
        last = await write(store, 3)
        await bp.publish(await batch(store, 0, last))
        assert await received_until(sub, last, []) == list(range(1, last + 1))
    finally:
        await relay.close()
    failures = {r.getMessage(): r.exc_info for r in caplog.records}
    for task, error in (("backplane-pump", "backplane bug"), ("event-relay", "store client bug")):
        exc_info = failures[f"event relay: {task} failed; restarting"]
        assert exc_info is not None and str(exc_info[1]) == error
        assert sample(RELAY_RESTARTS, task) == restarts[task] + 1


async def test_listeners_see_events_and_resets_before_subscribers(
    store: InProcessStoreClient,
) -> None:
    """`listen()`: the relay's starting seq reaches the listener as a reset (nothing before it
    is known), each batch in seq order before the ring has it (its seq is still the previous
    one), and a reset before the ring resets."""
    bp = MemoryBackplane()
    ring = Ring(max_events=100_000)
    relay = EventRelay(bp, store, ring, poll_interval=NEVER)
    seen: list[tuple[list[int], int]] = []
    resets: list[tuple[int, int]] = []
    relay.listen(
        lambda events: seen.append(([e.seq for e in events], ring.seq)),
        lambda seq: resets.append((seq, ring.seq)),
    )
    await relay.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            await relay.started.wait()
        last = await write(store, 4)
        await bp.publish(await batch(store, 2, last))  # 1..2 come from the log first
        await until(lambda: ring.seq == last, what="delivered")
        assert seen == [([1, 2], 0), ([3, 4], 2)]
        relay._reset(last + 10)
        assert resets == [(0, 0), (last + 10, last)]  # its starting point, then the reset
    finally:
        await relay.close()
