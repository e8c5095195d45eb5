"""Per-worker ring of change events indexed by seq, and the cursors that read it.

The relay is the ring's only producer: it appends every committed event once, in seq order
(after its gap repair). Each event is encoded at most once per wire format, on first use, and
shared by every subscriber. A subscriber is a `Cursor`: the last seq it was sent. A stream
sends what lies between its cursor and the ring's head, then waits on ONE wake-up shared by
every subscriber of the worker, with no task, queue or future of its own.

A stream the server lets us write to directly (a `Pusher`: service/api/connection.py) parks
once it has caught up: from then on the ring's one fan-out task writes each wake-up's events
to its socket itself, at most 128 subscribers or 1 ms at a time with the event loop yielded
between turns (so requests served by the same worker wait for a turn, not for the fan-out),
and the stream's own coroutine sleeps on a future of its own until the ring needs it: its
socket is above the high-water mark (it then blocks in its own write, where the sweep's stall
rule sees it), its cursor is more than a write behind, or it must end.

The ring is bounded by count and by bytes. A cursor older than its oldest event pages from
the store's event log (`LogPages`: bounded pages, shared by cursors reading the same range)
and then joins the ring, so resume, worker start-up, replay after a reset and slow clients are
one path. A periodic sweep, independent of traffic, drops a subscriber whose send has been
blocked for `stall_seconds` while its cursor fell out of the ring (it resumes from its last
seq), ends streams whose client has gone or has sent a WebSocket message, or whose session
token has expired or been revoked, and aborts the connection of a dropped stream that is still
blocked after a grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import OrderedDict
from typing import Any, NamedTuple, Protocol

import orjson

from service.metrics import (
    DELIVERIES,
    DELIVERY_LAG,
    DROPPED,
    STREAM_CLOSES,
    STREAM_OPENS,
    SUBSCRIBERS,
)
from service.pb import duckcast_pb2 as pb
from service.realtime.filters import NO_FILTERS, Filters
from service.storeclient import StoreClient
from service.wire import event_json, item_json

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
SSE_NAMES = {
    pb.CREATED: "item_created",
    pb.UPDATED: "item_updated",
    pb.DELETED: "item_deleted",
    pb.RESET: "reset",
}
# Memory an event costs in the ring, estimated from its protobuf size: the message object and
# up to three encodings of about that size each, plus fixed overheads.
EVENT_OVERHEAD = 600
# Log pages: the first page asks for FIRST_PAGE events; later pages for as many as fit in
# `page_bytes` at the largest event seen so far, never more than MAX_PAGE (1,000 events of the
# largest item the store accepts are ~41 MB, under the store protocol's 64 MiB frame).
FIRST_PAGE = 100
MIN_PAGE = 16
MAX_PAGE = 1000
# A dropped stream that has not ended this long after (its send is blocked on a client that
# stopped reading) has its connection aborted. After an overflow the client may still read
# again and learn why it was dropped; at shutdown the worker must not wait for it.
ABORT_GRACE = {"overflow": 60.0, "policy": 1.0, "shutdown": 1.0, "expired": 1.0}
# A fan-out yields the event loop after FANOUT_SLICE parked subscribers or FANOUT_TURN
# seconds, whichever comes first: every other ready callback of the worker (a request's I/O,
# the relay's next message, a store reply) waits for at most one such turn. Measured at 1,000
# subscribers x 100 writes/s (README, Fan-out), a 128-subscriber turn took 2-3 ms (p99 11-17
# ms, preempted on a busy machine), and the relay's hops and a POST's each waited behind one.
FANOUT_SLICE = 128
FANOUT_TURN = 0.001
# Bytes one socket write carries at most (one event may exceed it): bounds what a pushed write
# adds to a socket buffer, and a stream's own writes when it catches up.
WRITE_BYTES = 256 * 1024


LOG_GROWTH = math.log(1.01)


class Trace:
    """Diagnostic, off unless DUCKCAST_FANOUT_TRACE names a directory (loadtests.fanout
    --trace sets it): this worker's cumulative latency histograms, rewritten to <dir>/<pid>.json
    every second in loadtests/fanout/stats.py's format (buckets ~1% wide, ms). `publish`: commit
    -> the relay appends the event; `write`: commit -> the fan-out writes it to a subscriber's
    socket (one sample per delivery); `hold`: append -> the wake-up that releases it (the flush
    interval); `slice`: wake-up -> a fan-out slice starts; `turn`: a slice's duration; `lag`: a
    100 Hz timer's lateness (how long anything ready waits for the loop)."""

    NAMES = ("publish", "write", "hold", "slice", "turn", "lag")
    PERIOD = 0.01

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, f"{os.getpid()}.json")
        self.hists: dict[str, dict[str, Any]] = {
            n: {"buckets": {}, "n": 0, "max": None} for n in self.NAMES
        }
        self._due = 0.0

    def add(self, name: str, ms: float, n: int = 1) -> None:
        h = self.hists[name]
        b = 0 if not ms > 0.01 else min(2399, 1 + math.floor(math.log(ms / 0.01) / LOG_GROWTH))
        buckets = h["buckets"]
        buckets[b] = buckets.get(b, 0) + n
        h["n"] += n
        if h["max"] is None or ms > h["max"]:
            h["max"] = ms

    def start(self) -> None:
        self._due = time.monotonic() + self.PERIOD
        asyncio.get_running_loop().call_later(self.PERIOD, self._tick)
        self._save()

    def _tick(self) -> None:
        # monotonic, not loop.time(): uvloop's clock has millisecond steps
        now = time.monotonic()
        self.add("lag", (now - self._due) * 1000)
        self._due = now + self.PERIOD
        asyncio.get_running_loop().call_later(self.PERIOD, self._tick)

    def _save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(self.hists, option=orjson.OPT_NON_STR_KEYS))
        os.replace(tmp, self.path)
        asyncio.get_running_loop().call_later(1.0, self._save)


_trace_dir = os.environ.get("DUCKCAST_FANOUT_TRACE")
TRACE: Trace | None = Trace(_trace_dir) if _trace_dir else None


class EncodedEvent:
    """One event with its wire forms computed on first use and shared by every subscriber."""

    __slots__ = (
        "_commit_time",
        "_json",
        "_proto",
        "_sse",
        "_ws_binary",
        "_ws_text",
        "appended",
        "event",
        "seq",
        "size",
    )

    def __init__(self, event: pb.DomainEvent) -> None:
        self.event = event
        self.seq = event.seq
        self.size = event.ByteSize()
        self.appended = 0.0  # monotonic time the ring appended it (Trace only)
        self._commit_time: float | None = None
        self._sse: bytes | None = None
        self._json: str | None = None
        self._proto: bytes | None = None
        self._ws_text: bytes | None = None
        self._ws_binary: bytes | None = None

    @property
    def commit_time(self) -> float:
        """The commit time, for the delivery-lag histogram (read only when the event is
        delivered: every worker appends every event, with or without subscribers). A create
        or update stamps the item's updated_at in the commit; a delete carries the item as it
        was (no stamp): 0.0."""
        if self._commit_time is None:
            ev = self.event
            stamp = ev.item.updated_at
            self._commit_time = (
                stamp.seconds + stamp.nanos / 1e9 if ev.type in (pb.CREATED, pb.UPDATED) else 0.0
            )
        return self._commit_time

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            ev = self.event
            if ev.type == pb.DELETED:
                data = orjson.dumps({"id": ev.deleted_id})
            elif ev.type == pb.RESET:
                data = orjson.dumps({"seq": ev.seq})
            else:
                data = orjson.dumps(item_json(ev.item))
            name = SSE_NAMES[ev.type]
            self._sse = b"id: %d\nevent: %s\ndata: %s\n\n" % (ev.seq, name.encode(), data)
        return self._sse

    @property
    def json(self) -> str:
        if self._json is None:
            self._json = orjson.dumps(event_json(self.event)).decode()
        return self._json

    @property
    def proto(self) -> bytes:
        if self._proto is None:
            self._proto = self.event.SerializeToString()
        return self._proto

    @property
    def ws_text(self) -> bytes:
        """The JSON form as a whole WebSocket text frame (a server's frames are not masked,
        so one frame serves every subscriber)."""
        if self._ws_text is None:
            self._ws_text = ws_frame(0x1, orjson.dumps(event_json(self.event)))
        return self._ws_text

    @property
    def ws_binary(self) -> bytes:
        """The protobuf form as a whole WebSocket binary frame."""
        if self._ws_binary is None:
            self._ws_binary = ws_frame(0x2, self.proto)
        return self._ws_binary


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked WebSocket frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def reset_event(seq: int) -> EncodedEvent:
    return EncodedEvent(pb.DomainEvent(type=pb.RESET, seq=seq))


class Connection(Protocol):
    """What the ring needs of a subscriber's connection (service/api/connection.py adapts the
    server's): a client that has gone, one that sent a message, and ending it by force."""

    def gone(self) -> bool: ...

    def client_sent(self) -> bool: ...

    def abort(self) -> None: ...


class Pusher(Protocol):
    """A stream the ring's fan-out can write to without its coroutine: events go to the
    server's transport at once, without blocking."""

    def push(self, events: list[EncodedEvent]) -> int:
        """Write a prefix of `events` (at most WRITE_BYTES, but at least one event) now and
        return how many; 0 if the socket is above its high-water mark or closing (the stream's
        coroutine then writes, blocking)."""

    def push_keepalive(self) -> None: ...


class Waker(Protocol):
    """What a parked stream waits on: its coroutine's future, or, for a stream whose coroutine
    has returned (service/api/connection.py detaches it), an object that starts one."""

    def done(self) -> bool: ...

    def set_result(self, result: None) -> None: ...


class Revocations(Protocol):
    """Ids of revoked session tokens (the worker's service.api.auth.RevokedTokens)."""

    @property
    def version(self) -> int:
        """Grows with every id added: the sweep looks streams up only when it has changed."""

    def __contains__(self, token_id: object) -> bool: ...


class Session(Protocol):
    """The token a stream was opened with (service.api.auth.Token)."""

    @property
    def id(self) -> str: ...


class _NoRevocations:
    version = 0

    def __contains__(self, token_id: object) -> bool:
        return False


class Closed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Cursor:
    """One subscriber: the last seq it was sent, and what the sweep needs to judge it."""

    __slots__ = (
        "conn",
        "expires_at",
        "filters",
        "finished",
        "parked",
        "pusher",
        "reason",
        "sending",
        "seq",
        "session",
        "transport",
    )

    def __init__(
        self, seq: int, filters: Filters | None, transport: str, conn: Connection | None
    ) -> None:
        self.seq = seq
        self.filters = filters  # None: everything
        self.transport = transport
        self.conn = conn
        self.sending = 0.0  # monotonic time the current socket write began; 0.0: not writing
        self.reason: str | None = None  # why the stream must end (set once)
        self.finished = False  # the stream's handler has returned
        self.pusher: Pusher | None = None  # set by the stream if its server allows it
        # while the fan-out writes for the stream: what its coroutine awaits (or what starts one)
        self.parked: Waker | None = None
        # the session the stream was opened with: it ends when that token expires or is revoked
        self.expires_at = math.inf  # unix seconds
        # held, not a copy of its id: the Token is the one the worker's cache of verified
        # tokens already holds
        self.session: Session | None = None


class Page(NamedTuple):
    events: list[EncodedEvent]
    reset: bool  # the log no longer holds the events after the requested seq


class LogPages:
    """Pages of the store's event log for cursors older than the ring. Concurrent requests
    for one page share one store call, and recent pages are kept (bounded by bytes), so N
    clients resuming from 0 at once cost one pass over the log, not N."""

    def __init__(self, store: StoreClient | None, page_bytes: int, cache_bytes: int) -> None:
        self.store = store
        self._page_bytes = page_bytes
        self._cache_bytes = cache_bytes
        self._limit = FIRST_PAGE
        self._cache: OrderedDict[int, tuple[Page, int]] = OrderedDict()
        self._cached = 0  # bytes held by _cache
        self._fetching: dict[int, asyncio.Task[Page]] = {}

    async def after(self, seq: int) -> Page:
        hit = self._cache.get(seq)
        if hit is not None:
            self._cache.move_to_end(seq)
            return hit[0]
        task = self._fetching.get(seq)
        if task is None:
            task = self._fetching[seq] = asyncio.create_task(self._fetch(seq))
            task.add_done_callback(lambda _: self._fetching.pop(seq, None))
        return await asyncio.shield(task)  # one reader leaving must not cancel the others'

    async def _fetch(self, seq: int) -> Page:
        if self.store is None:
            raise RuntimeError("no store to page the event log from")
        batch = await self.store.events_since(seq, self._limit)
        if batch.reset:
            return Page([], True)
        events = [EncodedEvent(e) for e in batch.events]
        if events:
            largest = max(ev.size for ev in events)
            self._limit = max(MIN_PAGE, min(MAX_PAGE, self._page_bytes // max(largest, 1)))
            cost = sum(ev.size for ev in events) * 3 + EVENT_OVERHEAD * len(events)
            page = Page(events, False)
            self._cache[seq] = (page, cost)
            self._cached += cost
            while self._cached > self._cache_bytes and self._cache:
                _, (_, freed) = self._cache.popitem(last=False)
                self._cached -= freed
            return page
        return Page([], False)

    def clear(self) -> None:
        self._cache.clear()
        self._cached = 0


class Ring:
    def __init__(
        self,
        max_events: int = 10_000,
        max_bytes: int = 64 * MiB,
        *,
        store: StoreClient | None = None,
        flush_interval: float = 0.0,
        keepalive: float = 15.0,
        stall_seconds: float = 2.0,
        page_bytes: int = 4 * MiB,
        page_cache_bytes: int = 16 * MiB,
        fanout_turn: float = FANOUT_TURN,
        revoked: Revocations | None = None,
    ) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.stall_seconds = stall_seconds
        self.revoked = revoked if revoked is not None else _NoRevocations()  # (empty: falsy)
        self._revoked_seen = self.revoked.version  # what the last sweep checked streams against
        self.seq = 0  # the head: the last seq appended (the store's seq once started)
        self.started = False  # the relay has told us the store's seq: streams may open
        self.closing = False
        self.ticks = 0  # keep-alive ticks so far
        self.pages = LogPages(store, page_bytes, page_cache_bytes)
        self._events: list[EncodedEvent | None] = []
        self._seq0 = 1  # seq of _events[0]
        self._skip = 0  # entries trimmed from the front of _events (None), not yet compacted
        self._bytes = 0
        self._flush_interval = flush_interval
        self._fanout_turn = fanout_turn
        self._keepalive = keepalive
        self._cursors: set[Cursor] = set()
        self._ending: set[Cursor] = set()  # dropped, but their stream has not ended yet
        self._wakeup: asyncio.Future[None] | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._last_wake = float("-inf")  # loop time of the last wake-up
        self._unflushed = 0
        self._timers: list[asyncio.TimerHandle] = []
        self._parked: dict[Cursor, None] = {}  # ordered: the fan-out's order is stable
        self._fanout: asyncio.Task[None] | None = None
        self._fanout_again = False  # a wake-up came while the fan-out task was running
        self._keepalive_due = False
        self._trace_seq = 0  # Trace: the head at the last wake-up
        self._trace_wake = 0.0  # Trace: monotonic time of the last wake-up

    # -- the producer (the relay) --------------------------------------------------------------

    def start(self, seq: int) -> None:
        """The store's seq, learned by the relay: streams open from here on."""
        self._restart(seq)
        if not self.started:
            self.started = True
            loop = asyncio.get_running_loop()
            self._timers = [
                loop.call_later(self._keepalive, self._tick),
                loop.call_later(self._sweep_interval, self._sweep),
            ]
            if TRACE is not None:
                TRACE.start()

    def publish(self, events: list[pb.DomainEvent]) -> None:
        for event in events:
            if event.seq != self.seq + 1:  # the relay repairs gaps first; never trust a gap
                self._restart(event.seq - 1)
            encoded = EncodedEvent(event)
            if TRACE is not None and encoded.commit_time:
                TRACE.add("publish", (time.time() - encoded.commit_time) * 1000)
                encoded.appended = time.monotonic()
            self._events.append(encoded)
            self._bytes += encoded.size * 3 + EVENT_OVERHEAD
            self.seq = event.seq
        self._trim()
        self._unflushed += len(events)
        self._schedule_wake()

    def reset(self, seq: int) -> None:
        """Events up to `seq` can no longer be replayed: every cursor behind it meets the
        log's reset, sends `reset` and continues from the ring."""
        self._restart(seq)
        self.pages.clear()
        self._wake()

    async def paced(self) -> None:
        """For the relay, between messages: once a quarter of the ring has been appended
        since the last wake-up, wake the streams now and let them take it before the next
        message, so a burst does not push readers that keep up out of the ring."""
        if self._unflushed >= max(1, self.max_events // 4):
            self._wake()
        await asyncio.sleep(0)

    def close(self) -> None:
        """Shutdown: end every stream now so clients reconnect to another worker."""
        self.closing = True
        for timer in self._timers:
            timer.cancel()
        for cursor in list(self._cursors):
            self.drop(cursor, "shutdown")
        for cursor in list(self._ending):  # e.g. dropped for overflow and blocked on its client
            self._end_within(cursor, ABORT_GRACE["shutdown"])
        self._wake()

    # -- the consumers (streams) ---------------------------------------------------------------

    @property
    def first(self) -> int:
        """The oldest seq the ring holds (head + 1 when empty)."""
        return self._seq0 + self._skip

    def __len__(self) -> int:
        """Open subscribers."""
        return len(self._cursors)

    def subscribe(
        self,
        since: int | None,
        filters: Filters,
        transport: str,
        conn: Connection | None,
        *,
        expires_at: float = math.inf,
        session: Session | None = None,
    ) -> Cursor:
        """A cursor at `since` (None: the head); the sweep ends its stream ("expired") at
        `expires_at` (unix seconds) or once `session`'s id is among the revoked."""
        cursor = Cursor(
            self.seq if since is None else since,
            filters if filters != NO_FILTERS else None,
            transport,
            conn,
        )
        cursor.expires_at = expires_at
        cursor.session = session
        STREAM_OPENS.labels(transport).inc()
        if self.closing:
            cursor.reason = "shutdown"
        else:
            self._cursors.add(cursor)
            SUBSCRIBERS.labels(transport).inc()
        return cursor

    def after(self, seq: int, limit: int) -> list[EncodedEvent] | None:
        """Up to `limit` events after `seq` from the ring; None if some are no longer in it."""
        if seq + 1 < self.first:
            return None
        i = seq + 1 - self._seq0
        return self._events[i : i + limit]  # type: ignore[return-value]  # no None past _skip

    async def wait(self) -> None:
        """Until the next wake-up: new events, a keep-alive tick, or a stream to end."""
        fut = self._wakeup
        if fut is None or fut.done():
            fut = self._wakeup = asyncio.get_running_loop().create_future()
        try:
            await fut
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # Another stream was cancelled while waiting on this shared future, which
            # cancelled it for everyone: for us it is only a wake-up.

    async def park(self, cursor: Cursor) -> None:
        """For a caught-up stream with a pusher: until the ring needs its coroutine again
        (meanwhile the fan-out writes its events)."""
        if cursor.reason is not None or cursor.pusher is None:
            return
        fut = cursor.parked = asyncio.get_running_loop().create_future()
        self._parked[cursor] = None
        try:
            await fut
        finally:
            self._unpark(cursor)

    def hold(self, cursor: Cursor, waker: Waker) -> None:
        """`park` for a caught-up stream whose coroutine returns instead of waiting: the ring
        calls `waker.set_result(None)` when it needs one again (to catch up, or to end)."""
        if cursor.reason is not None or cursor.pusher is None:
            waker.set_result(None)
            return
        cursor.parked = waker
        self._parked[cursor] = None

    def drop(self, cursor: Cursor, reason: str) -> None:
        """End a stream (it sees `cursor.reason` when it next runs)."""
        if cursor.reason is not None:
            return
        cursor.reason = reason
        self._discard(cursor)
        self._unpark(cursor)
        grace = ABORT_GRACE.get(reason)
        if grace is not None:
            DROPPED.labels(reason).inc()
            self._end_within(cursor, grace)

    def finish(self, cursor: Cursor, reason: str) -> None:
        """The stream has ended (its handler calls this last); `reason` for the metric when
        the ring did not end it itself."""
        if cursor.reason is None:
            cursor.reason = reason
            self._discard(cursor)
        STREAM_CLOSES.labels(cursor.transport, cursor.reason).inc()
        cursor.finished = True
        self._ending.discard(cursor)

    # -- internals ------------------------------------------------------------------------------

    @property
    def _sweep_interval(self) -> float:
        return min(0.5, self.stall_seconds / 4)

    def _restart(self, seq: int) -> None:
        self._events = []
        self._seq0 = seq + 1
        self._skip = 0
        self._bytes = 0
        self.seq = seq

    def _trim(self) -> None:
        events = self._events
        while self._skip < len(events) - 1 and (
            len(events) - self._skip > self.max_events or self._bytes > self.max_bytes
        ):
            old = events[self._skip]
            assert old is not None
            self._bytes -= old.size * 3 + EVENT_OVERHEAD
            events[self._skip] = None
            self._skip += 1
        if self._skip > 1024 and self._skip * 2 > len(events):
            del events[: self._skip]
            self._seq0 += self._skip
            self._skip = 0

    def _schedule_wake(self) -> None:
        # At most one wake-up per flush interval, but not a delay: an event after a quiet
        # interval goes at once (a low rate pays no interval); one during the interval waits
        # for its end, with everything else that arrives by then.
        if self._flush_handle is not None:
            return
        loop = asyncio.get_running_loop()
        due = self._last_wake + self._flush_interval
        if due > loop.time():
            self._flush_handle = loop.call_at(due, self._wake)
        else:
            self._flush_handle = loop.call_soon(self._wake)

    def _wake(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._unflushed = 0
        self._last_wake = asyncio.get_running_loop().time()
        if TRACE is not None:
            self._trace_wake = now = time.monotonic()
            for ev in self.after(max(self._trace_seq, self.first - 1), MAX_PAGE) or ():
                if ev.appended:
                    TRACE.add("hold", (now - ev.appended) * 1000)
            self._trace_seq = self.seq
        fut, self._wakeup = self._wakeup, None
        if fut is not None and not fut.done():
            fut.set_result(None)
        if not self._parked:
            self._keepalive_due = False
        elif self._fanout is None:
            self._fanout = asyncio.get_running_loop().create_task(self._fan_out())
        else:
            self._fanout_again = True

    async def _fan_out(self) -> None:
        """Write what is new to every parked stream, yielding the loop every FANOUT_SLICE
        streams or `fanout_turn` seconds."""
        try:
            while True:
                self._fanout_again = False
                keepalive, self._keepalive_due = self._keepalive_due, False
                delivered = {"sse": 0, "ws": 0}
                oldest: EncodedEvent | None = None
                began = time.monotonic()
                if TRACE is not None:
                    TRACE.add("slice", (began - self._trace_wake) * 1000)
                written = 0  # in this turn
                for cursor in list(self._parked):
                    if written == FANOUT_SLICE or (
                        written and time.monotonic() - began >= self._fanout_turn
                    ):
                        if TRACE is not None:
                            TRACE.add("turn", (time.monotonic() - began) * 1000)
                        await asyncio.sleep(0)
                        began = time.monotonic()
                        written = 0
                        if TRACE is not None:
                            TRACE.add("slice", (began - self._trace_wake) * 1000)
                    written += 1
                    if cursor.parked is None:  # unparked or dropped meanwhile
                        continue
                    pusher = cursor.pusher
                    assert pusher is not None
                    if cursor.seq >= self.seq:
                        if keepalive:
                            pusher.push_keepalive()
                        continue
                    events = self.after(cursor.seq, MAX_PAGE)
                    if events is None:  # fell out of the ring (a restart): its own loop pages
                        self._unpark(cursor)
                        continue
                    last = events[-1].seq
                    if cursor.filters is not None:
                        events = [ev for ev in events if cursor.filters.match(ev)]
                    if events:
                        n = pusher.push(events)
                        if n == 0:  # the socket is full: its coroutine blocks in its write
                            self._unpark(cursor)
                            continue
                        if oldest is None:
                            oldest = events[0]
                        if TRACE is not None:
                            now = time.time()
                            for ev in events[:n]:
                                if ev.commit_time:
                                    TRACE.add("write", (now - ev.commit_time) * 1000)
                        delivered[cursor.transport] = delivered.get(cursor.transport, 0) + n
                        if n < len(events):
                            last = events[n - 1].seq
                    cursor.seq = last
                    if last < self.seq:  # more than one write behind: its coroutine catches up
                        self._unpark(cursor)
                if TRACE is not None:
                    TRACE.add("turn", (time.monotonic() - began) * 1000)
                self._count(delivered, oldest)
                if not self._fanout_again:
                    return
        except Exception:  # a bug here must not silence every parked stream for good
            logger.exception("fan-out failed; its streams take over")
            for cursor in list(self._parked):
                self._unpark(cursor)
        finally:
            self._fanout = None

    @staticmethod
    def _count(delivered: dict[str, int], oldest: EncodedEvent | None) -> None:
        # Once per fan-out, not per subscriber: a counter update costs a few µs in
        # multiprocess mode.
        for transport, n in delivered.items():
            if n:
                DELIVERIES.labels(transport).inc(n)
                if oldest is not None and oldest.commit_time:
                    DELIVERY_LAG.labels(transport).observe(
                        max(0.0, time.time() - oldest.commit_time)
                    )

    def _unpark(self, cursor: Cursor) -> None:
        fut = cursor.parked
        if fut is not None:
            cursor.parked = None
            self._parked.pop(cursor, None)
            if not fut.done():
                fut.set_result(None)

    def _tick(self) -> None:
        # One timer for every stream: those with nothing new send a keep-alive.
        self.ticks += 1
        self._keepalive_due = True
        self._wake()
        self._timers[0] = asyncio.get_running_loop().call_later(self._keepalive, self._tick)

    def _sweep(self) -> None:
        """Every _sweep_interval, whatever the traffic: drop what must end."""
        now, wall = time.monotonic(), time.time()
        oldest = self.first - 1  # a cursor below this has fallen out of the ring
        revoked = self.revoked
        # A stream's token was valid when it opened, so only a new revocation can end one: a
        # lookup per stream per sweep (a Python call each, half a sweep's cost) only then.
        check_revoked = revoked.version != self._revoked_seen
        self._revoked_seen = revoked.version
        ended = False
        for cursor in list(self._cursors):
            conn = cursor.conn
            if conn is not None and conn.gone():
                self.drop(cursor, "client")
            elif conn is not None and conn.client_sent():
                self.drop(cursor, "policy")
            elif cursor.expires_at <= wall or (
                check_revoked and cursor.session is not None and cursor.session.id in revoked
            ):
                self.drop(cursor, "expired")
            elif (
                cursor.sending
                and cursor.seq < oldest
                and now - cursor.sending >= self.stall_seconds
            ):
                logger.info("dropping a %s subscriber blocked behind the ring", cursor.transport)
                self.drop(cursor, "overflow")
            else:
                continue
            ended = True
        if ended:
            self._wake()
        self._timers[1] = asyncio.get_running_loop().call_later(self._sweep_interval, self._sweep)

    def _discard(self, cursor: Cursor) -> None:
        if cursor in self._cursors:
            self._cursors.remove(cursor)
            SUBSCRIBERS.labels(cursor.transport).dec()

    def _end_within(self, cursor: Cursor, seconds: float) -> None:
        """Abort the connection if the stream has not finished `seconds` from now."""
        if cursor.conn is not None and not cursor.finished:
            self._ending.add(cursor)
            asyncio.get_running_loop().call_later(seconds, self._force_end, cursor)

    def _force_end(self, cursor: Cursor) -> None:
        if not cursor.finished and cursor.conn is not None:
            logger.info(
                "aborting a %s subscriber that did not end (%s)", cursor.transport, cursor.reason
            )
            with contextlib.suppress(Exception):
                cursor.conn.abort()
