"""The per-worker Hub: filtered fan-out, shared encodings, bounded buffers, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from service.pb import duckcast_pb2 as pb
from service.realtime.filters import Filters
from service.realtime.hub import EncodedEvent, Hub, Subscription, SubscriptionClosed

_seq = 0


def event(
    kind: pb.EventType.ValueType,
    item_id: int,
    owner_id: int = 1,
    status: str = "active",
    before: str | None = None,
    **fields: Any,
) -> pb.DomainEvent:
    """A change event as the store emits it: on DELETED, `item` is the item's last state;
    `previous` (UPDATED: status `before`, DELETED: the last state) is what it was before."""
    global _seq
    _seq += 1
    item = pb.Item(
        id=item_id, title=f"item {item_id}", owner_id=owner_id, status=status, version=1, **fields
    )
    ev = pb.DomainEvent(
        type=kind,
        seq=_seq,
        item=item,
        stats=pb.Stats(total=1, active=1),
    )
    if kind == pb.DELETED:
        ev.deleted_id = item_id
    if kind != pb.CREATED:
        ev.previous.owner_id = owner_id
        ev.previous.status = before or status
    return ev


async def drain(sub: Subscription) -> list[EncodedEvent]:
    """Everything buffered right now (the subscription stays open)."""
    got: list[EncodedEvent] = []
    while batch := await sub.next_batch(0):
        got.extend(batch)
    return got


def seqs(events: list[EncodedEvent]) -> list[int]:
    return [e.seq for e in events]


async def test_filters_deliver_only_matching_events() -> None:
    """A subscriber with filters gets exactly the events whose item matches them (owner_id,
    status, both) before OR after the change: a create by its new state, a delete by the
    deleted item's last state, an update by either (so it sees the item leave and re-enter);
    a reset reaches everyone; an unfiltered subscriber gets everything."""
    hub = Hub()
    everyone = hub.subscribe(Filters(), "test")
    owner2 = hub.subscribe(Filters(owner_id=2), "test")
    completed = hub.subscribe(Filters(status="completed"), "test")
    owner2_active = hub.subscribe(Filters(owner_id=2, status="active"), "test")

    events = [
        event(pb.CREATED, 1, owner_id=1, status="active"),
        b2 := event(pb.CREATED, 2, owner_id=2, status="active"),
        b3 := event(pb.CREATED, 3, owner_id=2, status="completed"),
        b2done := event(pb.UPDATED, 2, owner_id=2, status="completed", before="active"),
        a1done := event(pb.UPDATED, 1, owner_id=1, status="completed", before="active"),
        b2gone := event(pb.DELETED, 2, owner_id=2, status="completed"),
        event(pb.CREATED, 4, owner_id=1, status="active"),
        event(pb.DELETED, 4, owner_id=1, status="active"),
        b5 := event(pb.CREATED, 5, owner_id=2, status="active"),
        b5gone := event(pb.DELETED, 5, owner_id=2, status="active"),
        b3back := event(pb.UPDATED, 3, owner_id=2, status="active", before="completed"),
        event(pb.UPDATED, 1, owner_id=1, status="completed", before="completed"),
    ]
    hub.publish(events)
    reset = events[-1].seq + 1
    hub.reset(reset)

    assert seqs(await drain(everyone)) == [e.seq for e in events] + [reset]
    assert seqs(await drain(owner2)) == [
        b2.seq,
        b3.seq,
        b2done.seq,
        b2gone.seq,
        b5.seq,
        b5gone.seq,
        b3back.seq,
        reset,
    ]
    assert seqs(await drain(completed)) == [
        b3.seq,
        b2done.seq,
        a1done.seq,
        b2gone.seq,
        b3back.seq,  # left the view
        events[-1].seq,
        reset,
    ]
    assert seqs(await drain(owner2_active)) == [
        b2.seq,
        b2done.seq,  # left the view
        b5.seq,
        b5gone.seq,
        b3back.seq,  # entered the view
        reset,
    ]
    assert hub.seq == reset


async def test_one_encoding_shared_by_every_subscriber() -> None:
    """Every subscriber receives the very same EncodedEvent object for an event, and each wire
    form (.sse, .proto, .json) is computed once: repeated access returns the same object."""
    hub = Hub()
    subs = [hub.subscribe(Filters(), "test") for _ in range(5)]
    created = event(pb.CREATED, 7, owner_id=3, description="d", priority=5)
    deleted = event(pb.DELETED, 7, owner_id=3)
    hub.publish([created, deleted])

    received = [await drain(s) for s in subs]
    for i in range(2):
        first = received[0][i]
        assert all(r[i] is first for r in received)
        assert first.sse is first.sse
        assert first.proto is first.proto
        assert first.json is first.json

    enc_created, enc_deleted = received[0]
    assert pb.DomainEvent.FromString(enc_created.proto) == created
    assert orjson.loads(enc_created.json)["item"]["id"] == 7
    assert enc_created.sse.startswith(b"id: %d\nevent: item_created\ndata: " % created.seq)
    assert enc_deleted.sse == b'id: %d\nevent: item_deleted\ndata: {"id":7}\n\n' % deleted.seq


async def test_slow_subscriber_is_dropped_with_overflow_and_others_get_everything() -> None:
    """A subscriber that does not consume is closed with reason "overflow" when one more event
    arrives while it holds `maxsize` (stall_seconds=0: however recent its oldest event); its
    buffer is freed at once, it leaves the hub, and it raises SubscriptionClosed("overflow")
    (it resumes from its last seq). The subscribers that keep up still get every event, in
    order."""
    hub = Hub(maxsize=5, stall_seconds=0)
    slow = hub.subscribe(Filters(), "test")
    fast = [hub.subscribe(Filters(), "test") for _ in range(2)]
    published: list[int] = []
    got: dict[int, list[int]] = {i: [] for i in range(len(fast))}

    for n in range(20):
        ev = event(pb.CREATED, 100 + n)
        hub.publish([ev])
        published.append(ev.seq)
        for i, sub in enumerate(fast):
            got[i].extend(seqs(await drain(sub)))
        if n < 5:
            assert slow.reason is None, f"closed after only {n + 1} events"

    assert slow.reason == "overflow"
    assert len(slow._buffer) == 0  # the buffered events are not kept for a dead subscriber
    assert len(hub) == len(fast)
    with pytest.raises(SubscriptionClosed) as closed:
        await slow.next_batch(0)
    assert closed.value.reason == "overflow"
    for i in got:
        assert got[i] == published


async def test_close_ends_subscriptions_with_shutdown_and_refuses_new_ones() -> None:
    """Hub.close() (what SIGTERM triggers) wakes every subscriber, even one blocked waiting,
    with SubscriptionClosed("shutdown"), and every later subscription is born closed with the
    same reason and never registered."""
    hub = Hub()
    waiting = hub.subscribe(Filters(), "test")
    idle = hub.subscribe(Filters(owner_id=9), "test")
    blocked = asyncio.create_task(waiting.next_batch(60))
    await asyncio.sleep(0)  # let it block on the empty buffer

    hub.close()

    async with asyncio.timeout(2):
        with pytest.raises(SubscriptionClosed) as closed:
            await blocked
    assert closed.value.reason == "shutdown"
    with pytest.raises(SubscriptionClosed, match="shutdown"):
        await idle.next_batch(60)
    assert len(hub) == 0

    late = hub.subscribe(Filters(), "test")
    assert late.reason == "shutdown"
    assert len(hub) == 0
    hub.publish([event(pb.CREATED, 1)])
    async with asyncio.timeout(2):
        with pytest.raises(SubscriptionClosed, match="shutdown"):
            await late.next_batch(60)


async def test_a_burst_bigger_than_the_buffer_is_not_an_overflow_but_a_stall_is() -> None:
    """One commit may carry more events than a subscriber's buffer: a subscriber handed such a
    burst is not dropped for it. It is dropped once over its buffer with its oldest pending
    event older than stall_seconds, or when it holds hard_limit times its buffer."""
    hub = Hub(maxsize=5, stall_seconds=0.2, hard_limit=4)
    reader = hub.subscribe(Filters(), "test")
    stalled = hub.subscribe(Filters(), "test")
    burst = [event(pb.CREATED, n) for n in range(12)]  # over maxsize, under the hard limit
    hub.publish(burst)
    assert (reader.reason, stalled.reason) == (None, None)
    assert seqs(await drain(reader)) == [e.seq for e in burst]

    await asyncio.sleep(0.25)  # stalled's oldest pending event is now older than stall_seconds
    later = event(pb.CREATED, 99)
    hub.publish([later])
    assert stalled.reason == "overflow"
    assert reader.reason is None
    assert seqs(await drain(reader)) == [later.seq]

    hub.publish([event(pb.CREATED, n) for n in range(5 * 4)])  # reader now holds the hard limit
    assert reader.reason is None
    hub.publish([event(pb.CREATED, 21)])
    assert reader.reason == "overflow"
    assert len(hub) == 0
