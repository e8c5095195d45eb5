"""One subscriber's stream: move its cursor from where it is to the ring's head, then wait.

Whether the cursor starts at a client's Last-Event-ID, at the head (a new client), far behind
(a slow reader) or below the ring (a resume after a worker start), the loop is the same: take
the events after the cursor from the ring, or from the store's log if the ring no longer holds
them, send them, advance the cursor past them. Each event is sent once: the cursor only moves
forward, to the last seq sent (or skipped by the filters). A stream with a pusher parks once
it has caught up, and the ring's fan-out writes for it until it needs its coroutine again
(service/realtime/ring.py); where the server allows it, the stream is detached instead and its
coroutine returns (service/api/connection.py), to be started again when the ring needs it.
"""

from __future__ import annotations

import time
from typing import Protocol

from service.realtime.ring import Closed, Cursor, EncodedEvent, Ring, reset_event

# Events taken from the ring per write: bounds a write when a cursor is far behind.
RING_BATCH = 1000


class Output(Protocol):
    """How a stream writes to its client."""

    async def write(self, events: list[EncodedEvent], live: bool) -> None:
        """Send a batch (live: from the ring, so its delivery lag is meaningful)."""

    async def keepalive(self) -> None: ...

    def detach(self) -> bool:
        """Leave the stream to the ring (`Ring.hold`) and return, if the server allows it: its
        coroutine then ends, and the ring starts another when it needs one."""


async def deliver(ring: Ring, cursor: Cursor, out: Output) -> None:
    """Runs until the cursor is dropped (raises Closed) or the stream is detached (returns);
    the store's errors propagate."""
    if cursor.seq > ring.seq:
        await _check_ahead(ring, cursor, out)
    tick = ring.ticks
    while True:
        if cursor.reason is not None:
            raise Closed(cursor.reason)
        if cursor.seq < ring.seq:
            events = ring.after(cursor.seq, RING_BATCH)
            live = events is not None
            if events is None:
                page = await ring.pages.after(cursor.seq)
                if page.reset:
                    # The log no longer reaches back to the cursor: the client reloads.
                    resume_at = max(ring.first - 1, cursor.seq)
                    await _send(cursor, out, [reset_event(resume_at)], False)
                    cursor.seq = resume_at
                    continue
                events = page.events
            if not events:  # the log behind the ring, or a ring restarted: do not spin
                await ring.wait()
                continue
            last = events[-1].seq
            filters = cursor.filters
            if filters is not None:
                events = [ev for ev in events if filters.match(ev)]
            if events:
                await _send(cursor, out, events, live)
            cursor.seq = last
            continue
        if cursor.pusher is not None:
            if out.detach():
                return
            await ring.park(cursor)
            continue
        await ring.wait()
        if ring.ticks != tick:
            tick = ring.ticks
            if cursor.seq >= ring.seq and cursor.reason is None:
                await out.keepalive()


async def _send(cursor: Cursor, out: Output, events: list[EncodedEvent], live: bool) -> None:
    # `sending` tells the ring's sweep this stream is blocked on its socket, and since when.
    cursor.sending = time.monotonic()
    try:
        await out.write(events, live)
    finally:
        cursor.sending = 0.0


async def _check_ahead(ring: Ring, cursor: Cursor, out: Output) -> None:
    """A cursor ahead of this worker's ring is fine if another worker already delivered up to
    it (this one will catch up), but a seq the store never issued (another deployment, a
    restored backup) would otherwise wait in silence forever: send `reset` instead."""
    if ring.pages.store is None:
        return
    batch = await ring.pages.store.events_since(cursor.seq, 1)
    if batch.reset:
        await _send(cursor, out, [reset_event(ring.seq)], False)
        cursor.seq = ring.seq
