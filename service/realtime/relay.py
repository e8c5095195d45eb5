"""A worker's single consumer of the backplane: it feeds the hub every event once, in order.

It tracks `hub.seq`, the last seq delivered. Payloads at or below it are duplicates and are
dropped; a payload that starts beyond `hub.seq + 1` reveals a gap, and the relay fetches the
missing events from the store's event log before delivering anything newer. The same repair
runs after every (re)subscription and whenever a periodic ping shows the store ahead of us
(which also covers a subscription that is silently dead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from service.backplane import RESUBSCRIBED, Backplane
from service.errors import DuckcastError
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.realtime.ring import Ring
from service.storeclient import StoreClient

logger = logging.getLogger(__name__)

REPAIR_PAGE = 1000  # events per store call and per hub publish


class EventRelay:
    def __init__(
        self, backplane: Backplane, store: StoreClient, hub: Ring, poll_interval: float = 1.0
    ) -> None:
        self._backplane = backplane
        self._store = store
        self._hub = hub
        self._poll_interval = poll_interval
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.started = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._pump(), name="backplane-pump"),
            asyncio.create_task(self._run(), name="event-relay"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _pump(self) -> None:
        async for payload in self._backplane.subscribe():
            self._inbox.put_nowait(payload)

    async def _run(self) -> None:
        # Start from the store's current seq; the first RESUBSCRIBED repairs anything after it.
        while not self.started.is_set():
            try:
                self._hub.start(await self._store.ping())
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
            if payload is RESUBSCRIBED:
                await self._guard(self._repair())
            else:
                await self._guard(self._receive(payload))
            # The inbox may hold many messages: let subscribers take what was just delivered
            # before the next, so a burst reaches them in steps, not as one huge backlog.
            await self._hub.paced()

    async def _guard(self, step: Coroutine[Any, Any, None]) -> None:
        try:
            await step
        except asyncio.CancelledError:
            raise
        except DuckcastError as exc:
            logger.warning("event relay: %s (will repair on the next event)", exc)
            await asyncio.sleep(0.2)
        except Exception:
            logger.exception("event relay step failed")
            await asyncio.sleep(0.2)

    async def _receive(self, payload: bytes) -> None:
        events = [e for e in spb.EventBatch.FromString(payload).events if e.seq > self._hub.seq]
        if not events:
            return
        if events[0].seq != self._hub.seq + 1:
            await self._repair(until=events[0].seq - 1)
            events = [e for e in events if e.seq > self._hub.seq]
        self._deliver(events)

    async def _poll(self) -> None:
        if await self._store.ping() > self._hub.seq:
            await self._repair()

    async def _repair(self, until: int | None = None) -> None:
        """Fetch and deliver everything after hub.seq (up to `until`) from the event log."""
        while until is None or self._hub.seq < until:
            batch = await self._store.events_since(self._hub.seq, REPAIR_PAGE)
            if batch.reset:
                logger.warning(
                    "events after %d are gone from the log; resetting subscribers", self._hub.seq
                )
                self._hub.reset(batch.last_seq)
                return
            events = [e for e in batch.events if until is None or e.seq <= until]
            if not events:
                return
            self._deliver(events)
            await self._hub.paced()

    def _deliver(self, events: list[pb.DomainEvent]) -> None:
        expected = self._hub.seq + 1
        for e in events:
            if e.seq != expected:
                raise RuntimeError(f"relay out of order: got {e.seq}, expected {expected}")
            expected += 1
        self._hub.publish(events)
