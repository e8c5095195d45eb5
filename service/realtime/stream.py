"""One subscriber's event sequence: replay from the store's log, then live from the hub,
with no gap and no duplicate at the seam.

The subscription is registered with the hub first, so live events start buffering at `start`
(the hub's seq at that moment); the replay covers (since, start] from the event log; live
events at or below the last seq sent are dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from service.realtime.hub import EncodedEvent, Subscription, reset_event
from service.storeclient import StoreClient

REPLAY_PAGE = 2000


async def events_for(
    sub: Subscription, start: int, since: int | None, store: StoreClient
) -> AsyncIterator[list[EncodedEvent]]:
    """Batches of events to send, in seq order; [] means "send a keep-alive"."""
    last = start if since is None else since
    if last > start:
        # Ahead of this worker: fine if another worker has already delivered it (we will
        # catch up), but an id the store never issued (another deployment, a restored
        # backup) would otherwise wait in silence forever.
        page = await store.events_since(last, 1)
        if page.reset:
            yield [reset_event(start)]
            last = start
    while last < start:
        page = await store.events_since(last, REPLAY_PAGE)
        if page.reset:
            yield [reset_event(start)]
            last = start
            break
        events = [e for e in page.events if e.seq <= start]
        if not events:
            break
        last = events[-1].seq
        filters = sub.filters
        yield [enc for enc in map(EncodedEvent, events) if filters is None or filters.match(enc)]
    while True:
        batch = await sub.next_batch()
        if not batch:
            yield []
            continue
        if batch[-1].seq <= last:
            continue
        if batch[0].seq <= last:
            batch = [ev for ev in batch if ev.seq > last]
        last = batch[-1].seq
        yield batch
