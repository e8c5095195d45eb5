"""A worker's read cache of hot items and unfiltered first list pages, kept exact by events.

Every worker's relay hands it every committed event, in seq order, before any subscriber sees
it (EventRelay.listen), so the cache knows `seq`: the last event it applied. An item entry is
replaced by an update's new state and dropped by a delete; a first page takes a create at its
top, an update in place, and is dropped by a delete that changes what it shows. A read that
needs seq N (a client presenting the seq of its own write) is answered from the cache once
`seq >= N`, after a short bounded wait for the relay; otherwise from the store. A read with
no seq needs at least the newest write this worker answered (`floor`: a client on one
connection reads its own writes); beyond that it is answered at `seq`, which trails the store
by the event delivery lag (milliseconds; a client of several workers presents its seq).

The race a cache miss must not lose: the store answers the item as it was when it read it; an
event for that item applied while the answer travels would be overwritten by the older answer
(for a delete: the item would live on in the cache forever). So a fill records the seq it
started at, events for ids being fetched are noted, and the answer is kept only if no event
for its id arrived after that seq (and no reset cleared the cache meanwhile). A create needs
no note: its id is new, so an answer for it reflects the create or a later change, and a later
change is noted when its event comes.

Bounded in bytes (an estimate of what entries hold, DUCKCAST_READ_CACHE_BYTES), least
recently used out first. Nothing is served before the relay's first `on_reset(seq)`, its
starting point: events before it were never seen here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import orjson

from service.metrics import READ_CACHE
from service.pb import duckcast_pb2 as pb
from service.wire import item_json, page_json

ENTRY_OVERHEAD = 400  # bytes: the entry object, its dict slot, the message objects
READ_WAIT = 0.1  # seconds a read waits for the relay to reach the seq it presented
HIT_MISS = ("hit", "miss")


class Cached:
    """An item or a page with its JSON and protobuf bodies, each encoded once, on first use;
    and `heads`, what a reader made of it to answer with (the API's response headers by
    media type), kept and dropped with the entry."""

    __slots__ = ("_json", "_proto", "heads", "size")

    def __init__(self, size: int) -> None:
        self._json: bytes | None = None
        self._proto: bytes | None = None
        self.heads: dict[str, list[tuple[bytes, bytes]]] = {}
        self.size = size  # the message, and up to two encodings of about its wire size each

    @property
    def message(self) -> pb.Item | pb.ItemPage:
        raise NotImplementedError

    @property
    def json(self) -> bytes:
        if self._json is None:
            m = self.message
            self._json = orjson.dumps(item_json(m) if isinstance(m, pb.Item) else page_json(m))
        return self._json

    @property
    def proto(self) -> bytes:
        if self._proto is None:
            self._proto = self.message.SerializeToString()
        return self._proto


class CachedItem(Cached):
    __slots__ = ("item",)

    def __init__(self, item: pb.Item) -> None:
        super().__init__(3 * item.ByteSize() + ENTRY_OVERHEAD)
        self.item = item

    @property
    def message(self) -> pb.Item:
        return self.item


class CachedPage(Cached):
    """A first page kept as a list (an event edits it in O(1) messages), with each item's
    protobuf size beside it (a relay batch sizes only the items it puts on the page); the
    ItemPage message is built when a read needs it."""

    __slots__ = ("_message", "items", "limit", "seq", "sizes", "total")

    def __init__(
        self, items: list[pb.Item], sizes: list[int], total: int, limit: int, seq: int
    ) -> None:
        super().__init__(3 * sum(sizes) + ENTRY_OVERHEAD)
        self.items, self.sizes, self.total, self.limit, self.seq = items, sizes, total, limit, seq
        self._message: pb.ItemPage | None = None

    @classmethod
    def of(cls, page: pb.ItemPage) -> CachedPage:
        items = list(page.items)
        return cls(items, [i.ByteSize() for i in items], page.total, page.limit, page.seq)

    @property
    def message(self) -> pb.ItemPage:
        if self._message is None:
            total, limit = self.total, self.limit
            self._message = pb.ItemPage(
                items=self.items, total=total, page=1, pages=-(-total // limit), limit=limit
            )
            self._message.seq = self.seq
        return self._message


E = TypeVar("E", bound=Cached)


class ReadCache:
    def __init__(self, max_bytes: int, wait: float = READ_WAIT) -> None:
        self.max_bytes = max_bytes
        self.wait = wait
        self.seq = 0  # the last event applied
        self.floor = 0  # the newest write this worker answered: its reads need at least it
        self.live = False  # set by the relay's first on_reset
        self.bytes = 0
        self._epoch = 0  # bumped by every reset: fills begun before it are dropped
        self._items: OrderedDict[int, CachedItem] = OrderedDict()
        self._pages: OrderedDict[int, CachedPage] = OrderedDict()  # page 1, unfiltered, by limit
        self._fetching: dict[int, int] = {}  # item id -> fills in flight
        self._touched: dict[int, int] = {}  # item id being filled -> seq of its latest event
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        # the counters' children, looked up once (labels() costs more than the hit itself)
        self._item_hits, self._item_misses = (READ_CACHE.labels("item", r) for r in HIT_MISS)
        self._page_hits, self._page_misses = (READ_CACHE.labels("page", r) for r in HIT_MISS)

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    # -- the relay's side -----------------------------------------------------------------

    def on_events(self, events: Sequence[pb.DomainEvent]) -> None:
        for ev in events:
            if ev.type == pb.CREATED:
                # A new id: nothing is cached for it, and a fill of it in flight answers the
                # item as created or later (a later change of it is noted when it comes).
                continue
            item_id = ev.deleted_id or ev.item.id
            if item_id in self._fetching:
                self._touched[item_id] = ev.seq
            entry = self._items.get(item_id)
            if entry is not None:
                if ev.type == pb.DELETED:
                    self._drop(self._items, item_id)
                elif ev.item.version >= entry.message.version:
                    self._replace(self._items, item_id, CachedItem(ev.item))
        for limit in list(self._pages):
            self._apply_to_page(limit, events)
        self.seq = events[-1].seq
        self._wake()

    def on_reset(self, seq: int) -> None:
        """Nothing before `seq` can be known from events: forget everything."""
        self._items.clear()
        self._pages.clear()
        self.bytes = 0
        self._epoch += 1
        self.seq = seq
        self.live = True
        self._wake()

    def _apply_to_page(self, limit: int, events: Sequence[pb.DomainEvent]) -> None:
        """A relay batch's events applied to one cached page, giving one new page (a page in
        use by a reader is never changed in place). Consecutive creates go on together: of a
        batch's creates only the newest `limit` can be on the page, and only they are sized."""
        page = self._pages.get(limit)
        if page is None:
            return  # evicted while this batch was applied
        assert isinstance(page, CachedPage)
        items, sizes = page.items, page.sizes
        created: list[pb.DomainEvent] = []  # creates not on `items` yet, oldest first
        copied = False
        last = None
        for ev in events:
            if ev.seq <= page.seq:
                continue  # the store's page already reflects it
            last = ev
            if ev.type == pb.CREATED:
                created.append(ev)
                continue
            if created:
                items, sizes = _on_top(created, items, sizes, limit)
                created, copied = [], True
            if ev.type == pb.UPDATED:
                at = _index(items, ev.item.id)
                if at is not None:
                    if not copied:
                        items, sizes, copied = items.copy(), sizes.copy(), True
                    items[at] = ev.item
                    sizes[at] = ev.item.ByteSize()
            elif (
                len(items) < limit or ev.deleted_id >= items[-1].id
            ):  # the deleted item was on the page: what moves up into it is not known here
                self._drop(self._pages, limit)
                return
            # (a delete of an item older than the whole, full page changes only the counts)
        if last is None:
            return
        if created:
            items, sizes = _on_top(created, items, sizes, limit)
        page = CachedPage(items, sizes, last.stats.total, limit, last.seq)
        self._replace(self._pages, limit, page)

    # -- the request's side ---------------------------------------------------------------

    def wrote(self, seq: int) -> None:
        self.floor = max(self.floor, seq)

    async def fresh(self, need: int | None) -> bool:
        """Whether the cache may answer a read that needs seq `need` (None: nothing beyond
        this worker's own writes), waiting a little for the relay when it is just behind."""
        if not self.live:
            return False
        need = max(need or 0, self.floor)
        if need <= self.seq:
            return True
        future = asyncio.get_running_loop().create_future()
        waiter = (need, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def hit(self, item_id: int, need: int | None) -> CachedItem | None:
        """The entry, if item() would answer it at once from the cache (counted as a hit);
        else None, and nothing counted: item() then waits, fetches and counts."""
        if self.live and max(need or 0, self.floor) <= self.seq:
            return self._cached(item_id)
        return None

    def _cached(self, item_id: int) -> CachedItem | None:
        """The item's entry if it is kept (counted as a hit, and now the most recent)."""
        entry = self._items.get(item_id)
        if entry is not None:
            self._items.move_to_end(item_id)
            self._item_hits.inc()
        return entry

    async def item(
        self, item_id: int, need: int | None, fetch: Callable[[], Awaitable[pb.Item]]
    ) -> CachedItem:
        if await self.fresh(need):
            cached = self._cached(item_id)
            if cached is not None:
                return cached
        self._item_misses.inc()
        epoch, start = self._epoch, self.seq
        self._fetching[item_id] = self._fetching.get(item_id, 0) + 1
        try:
            entry = CachedItem(await fetch())
            # Kept only if no event for this item came in while the store answered (it may
            # be older than that event), nor a reset.
            keep = epoch == self._epoch and self._touched.get(item_id, 0) <= start
        finally:
            left = self._fetching.pop(item_id) - 1
            if left:
                self._fetching[item_id] = left
            else:
                self._touched.pop(item_id, None)
        if keep and self.live:
            self._replace(self._items, item_id, entry)
        return entry

    async def first_page(
        self, limit: int, need: int | None, fetch: Callable[[], Awaitable[pb.ItemPage]]
    ) -> CachedPage:
        """`GET /api/items?page=1&limit=N` with no filter."""
        if await self.fresh(need):
            entry = self._pages.get(limit)
            if entry is not None:
                self._pages.move_to_end(limit)
                self._page_hits.inc()
                return entry
        self._page_misses.inc()
        epoch = self._epoch
        page = await fetch()
        entry = CachedPage.of(page)
        # The page carries its own seq: kept if it is not behind what the cache applied
        # (events after page.seq are then applied to it in order, the earlier ones skipped).
        if epoch == self._epoch and self.live and page.seq >= self.seq:
            self._replace(self._pages, limit, entry)
        return entry

    # -- bookkeeping -------------------------------------------------------------------------

    def _replace(self, table: OrderedDict[int, E], key: int, entry: E) -> None:
        self._drop(table, key)
        if entry.size > self.max_bytes:
            return
        table[key] = entry
        self.bytes += entry.size
        # least recently used first, items before pages (a page stands for many item reads)
        while self.bytes > self.max_bytes and self._items:
            self.bytes -= self._items.popitem(last=False)[1].size
        while self.bytes > self.max_bytes and self._pages:
            self.bytes -= self._pages.popitem(last=False)[1].size

    def _drop(self, table: OrderedDict[int, E], key: int) -> None:
        old = table.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def _wake(self) -> None:
        if not self._waiters:
            return
        for need, future in self._waiters:
            if need <= self.seq and not future.done():
                future.set_result(None)


def _on_top(
    created: list[pb.DomainEvent], items: list[pb.Item], sizes: list[int], limit: int
) -> tuple[list[pb.Item], list[int]]:
    """New lists: the items of `created` (oldest first; ids grow, so the newest is the page's
    first item) above `items`, cut to `limit`."""
    top = [ev.item for ev in created[: -limit - 1 : -1]]
    keep = limit - len(top)
    return top + items[:keep], [i.ByteSize() for i in top] + sizes[:keep]


def _index(items: list[pb.Item], item_id: int) -> int | None:
    for at, item in enumerate(items):
        if item.id == item_id:
            return at
    return None
