"""A worker's single consumer of the backplane: it feeds the ring every event once, in order.

It tracks `ring.seq`, the last seq delivered. Payloads at or below it are duplicates and are
dropped; a payload that starts beyond `ring.seq + 1` reveals a gap, and the relay fetches the
missing events from the store's event log before delivering anything newer. The same repair
runs after every (re)subscription and whenever a periodic ping shows the store ahead of us
(which also covers a subscription that is silently dead).

The inbox between the backplane and the relay is bounded (`DUCKCAST_RELAY_INBOX` messages):
when the relay falls that far behind, the queued payloads are dropped and a gap is marked, and
the next step repairs it from the log in pages, so a burst costs bounded memory here rather
than unbounded growth (Redis's own output-buffer limit never sees a consumer that is behind).
Both tasks are supervised: an unexpected error is logged with its traceback and the task is
restarted after a growing delay, never left dead nor retried in a busy loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final

from service.backplane import RESUBSCRIBED, Backplane
from service.errors import DuckcastError
from service.metrics import GAP_REPAIRS, RELAY_INBOX_OVERFLOWS, RELAY_RESTARTS, RELAY_SEQ
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.realtime.ring import Ring
from service.storeclient import StoreClient

logger = logging.getLogger(__name__)

REPAIR_PAGE = 1000  # events per store call and per ring publish
DEFAULT_INBOX = 1000  # backplane messages (each up to 1,000 events)
# Supervision: the delay before restarting a failed task doubles from MIN to MAX, and falls
# back to MIN once a task has run for STABLE seconds without failing.
RESTART_MIN, RESTART_MAX, RESTART_STABLE = 0.05, 5.0, 30.0
GAP: Final = RESUBSCRIBED  # an inbox marker: repair from the log before the next payload

EventsListener = Callable[[Sequence[pb.DomainEvent]], None]
ResetListener = Callable[[int], None]


class EventRelay:
    def __init__(
        self,
        backplane: Backplane,
        store: StoreClient,
        ring: Ring,
        poll_interval: float = 1.0,
        inbox: int = DEFAULT_INBOX,
    ) -> None:
        self._backplane = backplane
        self._store = store
        self._ring = ring
        self._poll_interval = poll_interval
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=inbox)
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[tuple[EventsListener, ResetListener]] = []
        self._seq_gauge = RELAY_SEQ.labels(backplane.label)
        self.started = asyncio.Event()

    def listen(self, on_events: EventsListener, on_reset: ResetListener) -> None:
        """`on_events` gets every event batch in seq order, and `on_reset(seq)` every reset,
        each before the ring's streams see it (so a read cache is never behind a stream).
        They run on the relay's task and must not block; one that raises is reset."""
        self._listeners.append((on_events, on_reset))

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._supervise(self._pump, "backplane-pump")),
            asyncio.create_task(self._supervise(self._run, "event-relay")),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _supervise(self, body: Callable[[], Awaitable[None]], name: str) -> None:
        delay = RESTART_MIN
        while True:
            began = time.monotonic()
            try:
                await body()
                logger.error("event relay: %s ended unexpectedly; restarting", name)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("event relay: %s failed; restarting", name)
            RELAY_RESTARTS.labels(name).inc()
            if time.monotonic() - began > RESTART_STABLE:
                delay = RESTART_MIN
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)
            if name == "backplane-pump":
                self._mark_gap()  # whatever was published while it was down is missing

    async def _pump(self) -> None:
        async for payload in self._backplane.subscribe():
            try:
                self._inbox.put_nowait(payload)
            except asyncio.QueueFull:
                # Dropping is safe: every event is in the store's log, and GAP repairs from it.
                RELAY_INBOX_OVERFLOWS.inc()
                logger.warning(
                    "event relay inbox full (%d messages): repairing from the store's log",
                    self._inbox.maxsize,
                )
                self._mark_gap()

    def _mark_gap(self) -> None:
        """Drop what is queued and queue GAP: the relay then fetches everything after its seq
        from the log, which covers all dropped payloads."""
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._inbox.put_nowait(GAP)

    async def _run(self) -> None:
        # Start from the store's current seq; the first RESUBSCRIBED repairs anything after it.
        while not self.started.is_set():
            try:
                self._ring.start(await self._store.ping())
                self._seq_gauge.set(self._ring.seq)
                for _, on_reset in self._listeners:
                    on_reset(self._ring.seq)  # the starting point: nothing before it is known
                self.started.set()
            except DuckcastError as exc:
                logger.warning("event relay waiting for the store: %s", exc)
                await asyncio.sleep(0.5)
        while True:
            try:
                async with asyncio.timeout(self._poll_interval):
                    payload = await self._inbox.get()
            except TimeoutError:
                await self._guard(self._poll())
                continue
            if payload is GAP:
                await self._guard(self._repair())
            else:
                await self._guard(self._receive(payload))
            # The inbox may hold many messages: let subscribers take what was just delivered
            # before the next, so a burst reaches them in steps, not as one huge backlog.
            await self._ring.paced()

    async def _guard(self, step: Coroutine[Any, Any, None]) -> None:
        """Run one step; if it fails, mark a gap so the next step repairs from the log (the
        payload it held may be undelivered) after a pause, not in a tight retry loop."""
        try:
            await step
            return
        except asyncio.CancelledError:
            raise
        except DuckcastError as exc:
            logger.warning("event relay: %s (will repair from the store's log)", exc)
        except Exception:
            logger.exception("event relay step failed (will repair from the store's log)")
        await asyncio.sleep(0.2)
        if self._inbox.empty():
            self._inbox.put_nowait(GAP)

    async def _receive(self, payload: bytes) -> None:
        events = [e for e in spb.EventBatch.FromString(payload).events if e.seq > self._ring.seq]
        if not events:
            return
        if events[0].seq != self._ring.seq + 1:
            await self._repair(until=events[0].seq - 1)
            events = [e for e in events if e.seq > self._ring.seq]
        self._deliver(events)

    async def _poll(self) -> None:
        if await self._store.ping() > self._ring.seq:
            await self._repair()

    async def _repair(self, until: int | None = None) -> None:
        """Fetch and deliver everything after ring.seq (up to `until`) from the event log."""
        GAP_REPAIRS.inc()
        while until is None or self._ring.seq < until:
            batch = await self._store.events_since(self._ring.seq, REPAIR_PAGE)
            if batch.reset:
                logger.warning(
                    "events after %d are gone from the log; resetting subscribers", self._ring.seq
                )
                self._reset(batch.last_seq)
                return
            events = [e for e in batch.events if until is None or e.seq <= until]
            if not events:
                return
            self._deliver(events)
            await self._ring.paced()

    def _deliver(self, events: list[pb.DomainEvent]) -> None:
        expected = self._ring.seq + 1
        for e in events:
            if e.seq != expected:
                raise RuntimeError(f"relay out of order: got {e.seq}, expected {expected}")
            expected += 1
        for on_events, on_reset in self._listeners:
            try:
                on_events(events)
            except Exception:
                logger.exception("event listener failed; resetting it")
                on_reset(events[-1].seq)
        self._ring.publish(events)
        self._seq_gauge.set(self._ring.seq)

    def _reset(self, seq: int) -> None:
        for _, on_reset in self._listeners:
            on_reset(seq)
        self._ring.reset(seq)
        self._seq_gauge.set(self._ring.seq)
