"""The per-worker ring and the streams that read it as cursors: filtered delivery, shared
encodings, bounds by count and bytes, paging below the ring, the sweep, shutdown.

Streams here are `deliver` loops with a collecting `write` (no server): what they would put on
the socket, in order."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson
import pytest

from service.pb import duckcast_pb2 as pb
from service.realtime.ring import (
    FANOUT_SLICE,
    Closed,
    Cursor,
    EncodedEvent,
    Filters,
    Ring,
    ws_frame,
)
from service.realtime.stream import deliver
from service.storeclient.inprocess import InProcessStoreClient
from tests.realtime.conftest import TIMEOUT, until

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


class Stream:
    """A running `deliver` loop for a cursor, collecting what it writes."""

    def __init__(self, ring: Ring, cursor: Cursor, block: asyncio.Event | None = None) -> None:
        self.ring = ring
        self.cursor = cursor
        self.got: list[EncodedEvent] = []
        self.writes = 0
        self.keepalives = 0
        self.block = block  # while cleared, every write blocks (a client that stopped reading)
        self.task = asyncio.create_task(deliver(ring, cursor, self))

    async def write(self, events: list[EncodedEvent], live: bool) -> None:
        self.cursor.sending = time.monotonic()
        if self.block is not None:
            await self.block.wait()
        self.writes += 1
        self.got.extend(events)
        self.cursor.seq = events[-1].seq

    async def keepalive(self) -> None:
        self.keepalives += 1

    def detach(self) -> bool:
        return False  # a stream of this test keeps its coroutine (see test_streams.py)

    async def until(self, seq: int) -> list[int]:
        async with asyncio.timeout(TIMEOUT):
            while not self.got or self.got[-1].seq < seq:
                await asyncio.sleep(0)
                if self.task.done():
                    self.task.result()
        return seqs(self.got)

    async def settled(self, seq: int) -> None:
        """The cursor has passed `seq` (sent, or skipped by the filters)."""
        async with asyncio.timeout(TIMEOUT):
            while self.cursor.seq < seq:
                await asyncio.sleep(0)
                if self.task.done():
                    self.task.result()

    async def ended(self) -> str:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(Closed) as closed:
                await self.task
        return closed.value.reason


class PushStream(Stream):
    """A stream whose socket the ring's fan-out may write to while it is parked (as a
    uvicorn connection's is): `pushed` counts those writes, `full` is a socket above its
    high-water mark (pushes refused), `limit` the events one write takes at most."""

    def __init__(self, ring: Ring, cursor: Cursor, block: asyncio.Event | None = None) -> None:
        self.pushed = 0
        self.full = False
        self.limit = 1_000_000
        self.on_push: Any = None
        cursor.pusher = self
        super().__init__(ring, cursor, block)

    def push(self, events: list[EncodedEvent]) -> int:
        if self.full:
            return 0
        if self.on_push is not None:
            self.on_push()
        taken = events[: self.limit]
        self.pushed += 1
        self.got.extend(taken)
        return len(taken)

    def push_keepalive(self) -> None:
        self.keepalives += 1


def started(**options: Any) -> Ring:
    ring = Ring(**options)
    ring.start(0)
    return ring


def seqs(events: list[EncodedEvent]) -> list[int]:
    return [e.seq for e in events]


@pytest.mark.parametrize("kind", [Stream, PushStream])
async def test_filters_deliver_only_matching_events(kind: type[Stream]) -> None:
    """A subscriber with filters gets exactly the events whose item matches them (owner_id,
    status, both) before OR after the change: a create by its new state, a delete by the
    deleted item's last state, an update by either (so it sees the item leave and re-enter);
    an unfiltered subscriber gets everything. The same whether its coroutine writes or the
    ring's fan-out does (a parked stream)."""
    global _seq
    _seq = 0
    ring = started()
    everyone, owner2, completed, owner2_active = (
        kind(ring, ring.subscribe(None, f, "test", None))
        for f in (
            Filters(),
            Filters(owner_id=2),
            Filters(status="completed"),
            Filters(owner_id=2, status="active"),
        )
    )

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
        a1again := event(pb.UPDATED, 1, owner_id=1, status="completed", before="completed"),
    ]
    if kind is PushStream:
        await until(lambda: len(ring._parked) == 4, what="four parked streams")
    ring.publish(events)
    last = events[-1].seq
    for stream in (everyone, owner2, completed, owner2_active):
        await stream.settled(last)
        if kind is PushStream:
            assert isinstance(stream, PushStream) and stream.pushed == 1 and stream.writes == 0

    assert seqs(everyone.got) == [e.seq for e in events]
    assert seqs(owner2.got) == [
        b2.seq,
        b3.seq,
        b2done.seq,
        b2gone.seq,
        b5.seq,
        b5gone.seq,
        b3back.seq,
    ]
    assert seqs(completed.got) == [
        b3.seq,
        b2done.seq,
        a1done.seq,
        b2gone.seq,
        b3back.seq,  # left the view
        a1again.seq,
    ]
    assert seqs(owner2_active.got) == [
        b2.seq,
        b2done.seq,  # left the view
        b5.seq,
        b5gone.seq,
        b3back.seq,  # entered the view
    ]


async def test_one_encoding_shared_by_every_subscriber() -> None:
    """Every stream writes the very same EncodedEvent object for an event, and each wire form
    (.sse, .proto, .json) is computed once: repeated access returns the same object."""
    created = event(pb.CREATED, 7, owner_id=3, description="d", priority=5)
    deleted = event(pb.DELETED, 7, owner_id=3)
    ring = Ring()
    ring.start(created.seq - 1)  # this module's events carry a global seq
    streams = [Stream(ring, ring.subscribe(None, Filters(), "test", None)) for _ in range(5)]
    ring.publish([created, deleted])

    received = [await s.until(deleted.seq) and s.got for s in streams]
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


def test_ring_is_bounded_by_count_and_by_bytes() -> None:
    """The ring keeps its newest events: at most max_events of them, and no more than
    max_bytes of estimated memory (always the newest one, however large)."""

    async def run() -> None:
        ring = Ring(max_events=10, max_bytes=10**9)
        ring.start(0)
        ring.publish([pb.DomainEvent(type=pb.CREATED, seq=n) for n in range(1, 26)])
        assert (ring.first, ring.seq) == (16, 25)
        assert ring.after(14, 100) is None  # 15 has left the ring
        assert seqs(ring.after(15, 100) or []) == list(range(16, 26))

        big = pb.Item(description="x" * 100_000)
        ring = Ring(max_events=1000, max_bytes=1_000_000)
        ring.start(0)
        ring.publish([pb.DomainEvent(type=pb.CREATED, seq=n, item=big) for n in range(1, 8)])
        assert ring.first == 5, "3 events of ~300 kB each fit in 1 MB"
        ring.publish(
            [pb.DomainEvent(type=pb.CREATED, seq=8, item=pb.Item(description="x" * 2_000_000))]
        )
        assert (ring.first, ring.seq) == (8, 8)

    asyncio.run(run())


async def test_a_stream_wakes_once_per_flush_and_keepalives_come_from_one_timer() -> None:
    """Many events published between two wake-ups reach an SSE-like stream in one write; an
    idle stream gets a keep-alive per tick of the ring's one timer and holds no task or future
    of its own while it waits (the ring's one shared wake-up)."""
    ring = Ring(flush_interval=0.05, keepalive=0.1)
    ring.start(0)
    stream = Stream(ring, ring.subscribe(None, Filters(), "test", None))
    for n in range(1, 51):
        ring.publish([pb.DomainEvent(type=pb.CREATED, seq=n)])
    assert await stream.until(50) == list(range(1, 51))
    assert stream.writes == 1
    await until(lambda: stream.keepalives >= 2, what="two keep-alives")
    ring.close()
    assert await stream.ended() == "shutdown"


async def test_the_flush_interval_limits_wake_ups_without_delaying_a_lone_event() -> None:
    """An event after a quiet interval reaches the stream at once, not a flush interval
    later; events during the interval that follows wait for its end and go in one write."""
    ring = Ring(flush_interval=0.5)
    ring.start(0)
    stream = Stream(ring, ring.subscribe(None, Filters(), "test", None))
    await asyncio.sleep(0)
    sent = time.monotonic()
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=1)])
    assert await stream.until(1) == [1]
    assert time.monotonic() - sent < 0.25
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=2)])
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=3)])
    await asyncio.sleep(0.25)
    assert seqs(stream.got) == [1]  # still inside the interval
    assert await stream.until(3) == [1, 2, 3]
    assert time.monotonic() - sent >= 0.5
    assert stream.writes == 2


async def test_close_ends_streams_with_shutdown_and_refuses_new_ones() -> None:
    """Ring.close() (what SIGTERM triggers) wakes every stream, even one waiting with nothing
    to send, with Closed("shutdown"); every later subscription is born closed with the same
    reason and never registered."""
    ring = started()
    waiting = Stream(ring, ring.subscribe(None, Filters(), "test", None))
    idle = Stream(ring, ring.subscribe(None, Filters(owner_id=9), "test", None))
    await asyncio.sleep(0)
    ring.close()
    assert await waiting.ended() == "shutdown"
    assert await idle.ended() == "shutdown"
    assert len(ring) == 0
    late = ring.subscribe(None, Filters(), "test", None)
    assert late.reason == "shutdown"
    assert len(ring) == 0


async def test_a_cancelled_stream_does_not_cancel_the_others() -> None:
    """Streams share one wake-up future: cancelling one waiting stream (a client task torn
    down) must not end the others; they keep receiving."""
    ring = started()
    streams = [Stream(ring, ring.subscribe(None, Filters(), "test", None)) for _ in range(3)]
    await asyncio.sleep(0)
    streams[0].task.cancel()
    await asyncio.sleep(0)
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=1)])
    for s in streams[1:]:
        assert await s.until(1) == [1]
    assert streams[0].task.cancelled()


async def test_a_cursor_below_the_ring_pages_from_the_log_then_joins_it(
    store: InProcessStoreClient,
) -> None:
    """A cursor older than the ring's oldest event reads the store's log in pages, then the
    ring: every event once, in order, across the seam."""
    for n in range(30):
        await store.create_items(1, [pb.ItemCreate(title=f"t{n}")])
    head = await store.ping()
    ring = Ring(max_events=5, store=store)
    ring.start(head - 5)
    ring.publish(list((await store.events_since(head - 5, 5)).events))
    assert ring.first == head - 4
    stream = Stream(ring, ring.subscribe(0, Filters(), "test", None))
    assert await stream.until(head) == list(range(1, head + 1))


async def test_a_blocked_stream_behind_the_ring_is_dropped_by_the_sweep_without_new_events() -> (
    None
):
    """A stream whose write is blocked (its client stopped reading) and whose cursor has left
    the ring is dropped with "overflow" within stall_seconds plus a sweep, by the ring's
    periodic sweep: no further publish is needed. One blocked but still inside the ring stays."""
    ring = started(max_events=5, stall_seconds=0.2)
    gate = asyncio.Event()
    behind = Stream(ring, ring.subscribe(None, Filters(), "test", None), block=gate)
    inside = Stream(ring, ring.subscribe(None, Filters(), "test", None), block=gate)
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=1)])
    await asyncio.sleep(0)  # both are now blocked writing event 1
    inside.cursor.seq = 1  # as if its write of 1 had gone through: still inside the ring
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=n) for n in range(2, 7)])  # 1 leaves
    published = time.monotonic()
    await until(lambda: behind.cursor.reason is not None, what="the blocked stream dropped")
    assert time.monotonic() - published < 0.2 + 0.1 + 0.1
    assert behind.cursor.reason == "overflow"
    assert inside.cursor.reason is None
    gate.set()
    assert await behind.ended() == "overflow"
    assert await inside.until(6) == [1, 2, 3, 4, 5, 6]


# -- the fan-out to parked streams ---------------------------------------------------------------


async def parked(n: int, ring: Ring, **kw: Any) -> list[PushStream]:
    streams = [
        PushStream(ring, ring.subscribe(None, Filters(), "test", None), **kw) for _ in range(n)
    ]
    await until(lambda: len(ring._parked) == n, what=f"{n} parked streams")
    return streams


async def test_the_fan_out_yields_to_the_event_loop_between_slices() -> None:
    """A wake-up writes to parked streams FANOUT_SLICE at a time and lets the event loop run
    between slices: a callback made ready during the first slice (a request's I/O, say) runs
    after FANOUT_SLICE writes, not after all of them. Each stream gets one write per wake-up
    and its coroutine is not resumed. (No time bound here: the count alone decides.)"""
    ring = started(fanout_turn=math.inf)
    streams = await parked(3 * FANOUT_SLICE, ring)
    seen: list[int] = []
    loop = asyncio.get_running_loop()

    def first_push() -> None:
        streams[0].on_push = None
        loop.call_soon(lambda: seen.append(sum(s.pushed for s in streams)))

    streams[0].on_push = first_push
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=1), pb.DomainEvent(type=pb.CREATED, seq=2)])
    for s in streams:
        await s.settled(2)
    assert seen == [FANOUT_SLICE]
    assert all(s.pushed == 1 and s.writes == 0 and seqs(s.got) == [1, 2] for s in streams)


async def test_a_fan_out_turn_is_bounded_in_time_so_a_request_gets_through() -> None:
    """However few subscribers a turn has written, once it has run `fanout_turn` seconds the
    fan-out yields: a callback made ready during the first write (a request's I/O, a store
    reply) runs after the writes that fit in that time, not after FANOUT_SLICE slow ones.
    Here each write takes at least 1 ms and a turn 3 ms, so it runs after at most 4 writes."""
    ring = started(fanout_turn=0.003)
    streams = await parked(FANOUT_SLICE, ring)
    seen: list[int] = []
    loop = asyncio.get_running_loop()

    def slow_write() -> None:  # a socket write that takes 1 ms of the loop's time
        end = time.monotonic() + 0.001
        while time.monotonic() < end:
            pass

    def first_push() -> None:
        slow_write()
        loop.call_soon(lambda: seen.append(sum(s.pushed for s in streams)))

    streams[0].on_push = first_push
    for s in streams[1:]:
        s.on_push = slow_write
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=1)])
    for s in streams:
        await s.settled(1)
    assert 1 <= seen[0] <= 4
    assert all(s.pushed == 1 and s.writes == 0 and seqs(s.got) == [1] for s in streams)


async def test_a_parked_stream_whose_socket_is_full_blocks_in_its_own_write_and_is_swept() -> None:
    """The fan-out never writes to a socket above its high-water mark: the stream leaves the
    fan-out and writes itself, blocking (so memory stays bounded by one write); once its
    cursor has left the ring the sweep drops it ("overflow") with no further events, and a
    full socket inside the ring that drains gets every event, in order."""
    ring = started(max_events=5, stall_seconds=0.2)
    gate = asyncio.Event()
    stuck, slow = await parked(2, ring, block=gate)
    stuck.full = slow.full = True
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=1)])
    await until(lambda: stuck.cursor.sending > 0 and slow.cursor.sending > 0, what="both blocked")
    assert stuck.cursor.parked is None and slow.pushed == 0
    slow.cursor.seq = 1  # as if its write of 1 had gone through: still inside the ring
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=n) for n in range(2, 7)])  # 1 leaves
    published = time.monotonic()
    await until(lambda: stuck.cursor.reason is not None, what="the blocked stream dropped")
    assert time.monotonic() - published < 0.2 + 0.1 + 0.1
    assert stuck.cursor.reason == "overflow" and slow.cursor.reason is None
    slow.full = False
    gate.set()
    assert await stuck.ended() == "overflow"
    assert await slow.until(6) == [1, 2, 3, 4, 5, 6]


async def test_a_parked_stream_more_than_a_write_behind_catches_up_in_its_own_loop() -> None:
    """A push takes what fits in one write; the rest is the stream's own to write (its
    coroutine, which waits for the socket): nothing skipped, in order, then parked again."""
    ring = started()
    (stream,) = await parked(1, ring)
    stream.limit = 3
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=n) for n in range(1, 11)])
    assert await stream.until(10) == list(range(1, 11))
    assert stream.pushed == 1 and stream.writes == 1
    await until(lambda: stream.cursor.parked is not None, what="parked again")
    ring.publish([pb.DomainEvent(type=pb.CREATED, seq=11)])
    assert await stream.until(11) == list(range(1, 12))
    assert stream.pushed == 2


async def test_parked_streams_get_keepalives_and_end_on_close() -> None:
    """An idle parked stream gets one keep-alive per tick from the fan-out (its coroutine
    stays asleep), and Ring.close() wakes it with Closed("shutdown")."""
    ring = Ring(keepalive=0.05)
    ring.start(0)
    (stream,) = await parked(1, ring)
    await until(lambda: stream.keepalives >= 2, what="two keep-alives")
    assert stream.writes == 0
    ring.close()
    assert await stream.ended() == "shutdown"


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_websocket_frames_carry_the_payload_at_every_length_encoding(size: int) -> None:
    """ws_frame: FIN + opcode, no mask, 7-bit / 16-bit / 64-bit payload length (RFC 6455)."""
    payload = b"x" * size
    frame = ws_frame(0x2, payload)
    assert frame[0] == 0x82
    n = frame[1]
    assert n & 0x80 == 0  # a server does not mask
    if size < 126:
        assert n == size and frame[2:] == payload
    elif size < 65536:
        assert n == 126 and int.from_bytes(frame[2:4], "big") == size and frame[4:] == payload
    else:
        assert n == 127 and int.from_bytes(frame[2:10], "big") == size and frame[10:] == payload
