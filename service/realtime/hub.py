"""Per-worker fan-out of change events to local subscribers.

Guarantees: a subscriber receives the events the hub publishes, in publish order (the relay
publishes in seq order with no gaps), each encoded once per format for all subscribers. Each
subscriber has a bounded buffer; one that cannot keep up is closed with reason "overflow" (it
resumes with its last seq) instead of growing memory or slowing the others. Wake-ups are
coalesced (one per subscriber per flush interval) and keep-alives come from one hub timer, so
an idle subscriber costs no task or timer of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

import orjson

from service.metrics import DROPPED, SUBSCRIBERS
from service.pb import duckcast_pb2 as pb
from service.realtime.filters import NO_FILTERS, Filters
from service.wire import event_json, item_json

logger = logging.getLogger(__name__)

SSE_NAMES = {
    pb.CREATED: "item_created",
    pb.UPDATED: "item_updated",
    pb.DELETED: "item_deleted",
    pb.RESET: "reset",
}


class EncodedEvent:
    """One event with its wire forms computed on first use and shared by every subscriber."""

    __slots__ = ("_json", "_proto", "_sse", "event", "seq")

    def __init__(self, event: pb.DomainEvent) -> None:
        self.event = event
        self.seq = event.seq
        self._sse: bytes | None = None
        self._json: str | None = None
        self._proto: bytes | None = None

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


def reset_event(seq: int) -> EncodedEvent:
    return EncodedEvent(pb.DomainEvent(type=pb.RESET, seq=seq))


class SubscriptionClosed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# A subscriber over its buffer is dropped only once its oldest pending event is STALL_SECONDS
# old (a subscriber that keeps reading may be handed a commit bigger than its buffer), or when
# it holds HARD_LIMIT times its buffer whatever the age.
STALL_SECONDS = 2.0
HARD_LIMIT = 4
# A dropped stream that has not ended this long after (its send is blocked on a client that
# stopped reading) has its connection aborted. After an overflow the client may still read
# again and learn why it was dropped; at shutdown the worker must not wait for it.
ABORT_GRACE = {"overflow": 60.0, "shutdown": 1.0}


class Subscription:
    """One subscriber's pending events. Idle, it is a few hundred bytes: no task, no timer."""

    __slots__ = (
        "_abort",
        "_buffer",
        "_hub",
        "_maxsize",
        "_pending_since",
        "_waiter",
        "filters",
        "finished",
        "reason",
        "transport",
    )

    def __init__(self, hub: Hub, filters: Filters | None, maxsize: int, transport: str) -> None:
        self._hub = hub
        self.filters = filters  # None: everything
        self.transport = transport
        self._maxsize = maxsize
        self._buffer: deque[EncodedEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._pending_since = 0.0
        self._abort: Callable[[], object] | None = None
        self.reason: str | None = None
        self.finished = False  # set by the stream when it has ended

    def on_abort(self, abort: Callable[[], object]) -> None:
        """How to end this stream's connection if it does not end by itself once dropped."""
        self._abort = abort

    def offer(self, ev: EncodedEvent, now: float) -> bool:
        """Queue `ev`; False if this subscriber is closed (now or before)."""
        if self.reason is not None:
            return False
        buffer = self._buffer
        if not buffer:
            self._pending_since = now
        elif len(buffer) >= self._maxsize and (
            now - self._pending_since >= self._hub.stall_seconds
            or len(buffer) >= self._maxsize * self._hub.hard_limit
        ):
            self.close("overflow")
            return False
        buffer.append(ev)
        return True

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self._buffer.clear()
        self.wake()
        self._hub._discard(self)
        grace = ABORT_GRACE.get(reason)
        if grace is not None:
            DROPPED.labels(reason).inc()
            self.end_within(grace)

    def end_within(self, seconds: float) -> None:
        """Abort the connection if the stream has not finished `seconds` from now."""
        if self._abort is not None and not self.finished:
            self._hub._ending.add(self)
            asyncio.get_running_loop().call_later(seconds, self._force_end)

    def finish(self) -> None:
        """The stream has ended (called by its handler, last)."""
        self.finished = True
        self._hub._ending.discard(self)

    def _force_end(self) -> None:
        if not self.finished and self._abort is not None:
            logger.info(
                "aborting a %s subscriber that did not end (%s)", self.transport, self.reason
            )
            self._abort()

    async def next_batch(self, wait: float | None = None) -> list[EncodedEvent]:
        """Everything pending, once the hub wakes us; [] on a keep-alive tick (or after `wait`
        seconds, if given). Raises SubscriptionClosed when closed."""
        if not self._buffer and self.reason is None:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                if wait is None:
                    await waiter
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await waiter
            finally:
                self._waiter = None
        if self.reason is not None:
            raise SubscriptionClosed(self.reason)
        batch = list(self._buffer)
        self._buffer.clear()
        return batch


class Hub:
    def __init__(
        self,
        maxsize: int = 1000,
        *,
        flush_interval: float = 0.0,
        keepalive: float = 15.0,
        stall_seconds: float = STALL_SECONDS,
        hard_limit: int = HARD_LIMIT,
    ) -> None:
        self.maxsize = maxsize
        self.stall_seconds = stall_seconds
        self.hard_limit = hard_limit
        self.seq = 0  # the last seq published to subscribers
        self.closing = False
        self._flush_interval = flush_interval
        self._keepalive = keepalive
        self._subscriptions: set[Subscription] = set()
        self._dirty: set[Subscription] = set()
        self._ending: set[Subscription] = set()  # dropped, but their stream has not ended yet
        self._unflushed = 0  # events published since the last flush
        self._flushed: asyncio.Future[None] | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._ticker: asyncio.TimerHandle | None = None

    def subscribe(self, filters: Filters, transport: str) -> Subscription:
        sub = Subscription(
            self, filters if filters != NO_FILTERS else None, self.maxsize, transport
        )
        if self.closing:
            sub.reason = "shutdown"
        else:
            self._subscriptions.add(sub)
            SUBSCRIBERS.labels(transport).inc()
            if self._ticker is None:
                self._tick()
        return sub

    def _discard(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)
            self._dirty.discard(sub)
            SUBSCRIBERS.labels(sub.transport).dec()

    def __len__(self) -> int:
        return len(self._subscriptions)

    def publish(self, events: list[pb.DomainEvent]) -> None:
        subs = list(self._subscriptions)
        dirty = self._dirty
        now = time.monotonic()
        for event in events:
            encoded = EncodedEvent(event)
            for sub in subs:
                if (sub.filters is None or sub.filters.match(encoded)) and sub.offer(encoded, now):
                    dirty.add(sub)
            self.seq = event.seq
        self._unflushed += len(events)
        self._schedule_flush()

    async def paced(self) -> None:
        """For the relay, between messages: once half a buffer has been published since the
        last flush, wait for the flush and let the woken subscribers take their events, so
        a burst of many messages reaches them in steps instead of piling up."""
        if self._unflushed >= self.maxsize // 2 and self._flush_handle is not None:
            if self._flushed is None:
                self._flushed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._flushed)
        await asyncio.sleep(0)

    def reset(self, seq: int) -> None:
        """Events up to `seq` can no longer be replayed: tell every subscriber to reload."""
        encoded = reset_event(seq)
        now = time.monotonic()
        for sub in list(self._subscriptions):
            if sub.offer(encoded, now):
                self._dirty.add(sub)
        self.seq = seq
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._dirty and self._flush_handle is None:
            loop = asyncio.get_running_loop()
            if self._flush_interval > 0:
                self._flush_handle = loop.call_later(self._flush_interval, self._flush)
            else:
                self._flush_handle = loop.call_soon(self._flush)

    def _flush(self) -> None:
        # One wake-up per subscriber for everything published since the last flush.
        self._flush_handle = None
        self._unflushed = 0
        dirty, self._dirty = self._dirty, set()
        for sub in dirty:
            sub.wake()
        if self._flushed is not None:  # after the wake-ups: subscribers run before the relay
            self._flushed.set_result(None)
            self._flushed = None

    def _tick(self) -> None:
        # One timer for all subscribers, not one per subscriber: the idle ones send a keep-alive.
        for sub in self._subscriptions:
            if sub not in self._dirty:
                sub.wake()
        self._ticker = (
            None
            if self.closing
            else asyncio.get_running_loop().call_later(self._keepalive, self._tick)
        )

    def close(self) -> None:
        """Shutdown: end every stream now so clients reconnect to another worker."""
        self.closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        for sub in list(self._subscriptions):
            sub.close("shutdown")
        for sub in list(self._ending):  # e.g. dropped for overflow and blocked on its client
            sub.end_within(ABORT_GRACE["shutdown"])
