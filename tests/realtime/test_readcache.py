"""The worker read cache against a real store: events keep it exact, a fill racing an event
loses, reads wait (boundedly) for the seq they present, and it stays within its bytes."""

from __future__ import annotations

import asyncio
import random

import pytest

from service.errors import NotFound
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.realtime.readcache import ReadCache
from service.storeclient.inprocess import InProcessStoreClient
from service.wire import item_json, page_json
from tests.realtime.conftest import TIMEOUT

MiB = 1024 * 1024


class Fetches:
    """Counts the store round trips the cache makes; optionally holds one between the store's
    answer and the cache's use of it (the window an event can slip into)."""

    def __init__(self, store: InProcessStoreClient) -> None:
        self.store = store
        self.items = 0
        self.pages = 0
        self.hold: asyncio.Event | None = None
        self.answered = asyncio.Event()

    async def item(self, item_id: int) -> pb.Item:
        self.items += 1
        item = await self.store.get_item(item_id)
        self.answered.set()
        if self.hold is not None:
            await self.hold.wait()
        return item

    async def page(self, limit: int) -> pb.ItemPage:
        self.pages += 1
        return await self.store.list_items(spb.ListItems(page=1, limit=limit))


async def follow(cache: ReadCache, store: InProcessStoreClient) -> None:
    """What the relay does: hand the cache every event after its seq, in order."""
    batch = await store.events_since(cache.seq, 1000)
    if batch.events:
        cache.on_events(list(batch.events))


async def started(store: InProcessStoreClient, max_bytes: int = 4 * MiB) -> ReadCache:
    cache = ReadCache(max_bytes)
    cache.on_reset(await store.ping())  # the relay's starting point
    return cache


async def test_items_are_filled_once_then_kept_exact_by_events(
    store: InProcessStoreClient,
) -> None:
    """A miss fills from the store; later reads hit; an update replaces the entry (no store
    call), a delete drops it (the next read asks the store: 404)."""
    cache = await started(store)
    fetch = Fetches(store)
    (item,) = (await store.create_items(1, [pb.ItemCreate(title="a")])).items
    await follow(cache, store)
    got = await cache.item(item.id, None, lambda: fetch.item(item.id))
    assert got.item == item and fetch.items == 1
    assert (await cache.item(item.id, None, lambda: fetch.item(item.id))).item == item
    assert fetch.items == 1

    updated = await store.update_item(1, item.id, pb.ItemUpdate(priority=7))
    await follow(cache, store)
    got = await cache.item(item.id, None, lambda: fetch.item(item.id))
    assert got.item == updated and fetch.items == 1
    assert got.json == orjson_bytes(item_json(updated)) and got.proto == updated.SerializeToString()

    await store.delete_item(1, item.id)
    await follow(cache, store)
    with pytest.raises(NotFound):
        await cache.item(item.id, None, lambda: fetch.item(item.id))
    assert fetch.items == 2


@pytest.mark.parametrize("change", ["update", "delete"])
async def test_an_event_during_a_fill_wins_over_the_older_answer(
    store: InProcessStoreClient, change: str
) -> None:
    """The store answers the item; before the cache takes the answer, the item changes and the
    change's event reaches the cache. The older answer must not be cached: the next read
    returns the change (updated) or asks the store (deleted), never the old item."""
    cache = await started(store)
    fetch = Fetches(store)
    (item,) = (await store.create_items(1, [pb.ItemCreate(title="a")])).items
    await follow(cache, store)
    fetch.hold = asyncio.Event()
    filling = asyncio.create_task(cache.item(item.id, None, lambda: fetch.item(item.id)))
    await asyncio.wait_for(fetch.answered.wait(), TIMEOUT)  # the answer is on its way
    if change == "update":
        await store.update_item(1, item.id, pb.ItemUpdate(priority=9))
    else:
        await store.delete_item(1, item.id)
    await follow(cache, store)
    fetch.hold.set()
    assert (await filling).item == item  # this read began before the change: fine
    fetch.hold = None

    if change == "update":
        got = await cache.item(item.id, None, lambda: fetch.item(item.id))
        assert got.item.priority == 9 and got.item.version == 2
    else:
        with pytest.raises(NotFound):
            await cache.item(item.id, None, lambda: fetch.item(item.id))
    assert fetch.items == 2  # the stale answer was not cached: the store was asked again


async def test_a_read_waits_for_the_seq_it_presents(store: InProcessStoreClient) -> None:
    """A read presenting a seq the cache has not reached (or after a write this worker
    answered) waits for the relay (answered from the cache as soon as it arrives), and after
    the bound falls through to the store."""
    cache = await started(store)
    fetch = Fetches(store)
    (item,) = (await store.create_items(1, [pb.ItemCreate(title="a")])).items
    await follow(cache, store)
    await cache.item(item.id, None, lambda: fetch.item(item.id))
    updated, seq = await store.update_item_at(1, item.id, pb.ItemUpdate(priority=3))
    assert seq == await store.ping()
    # without a seq, the cache answers what it has (the relay has not delivered yet)
    assert (await cache.item(item.id, None, lambda: fetch.item(item.id))).item == item
    reading = asyncio.create_task(cache.item(item.id, seq, lambda: fetch.item(item.id)))
    await asyncio.sleep(0)
    assert not reading.done()
    await follow(cache, store)  # the relay delivers: the waiting read is answered
    assert (await reading).item == updated
    assert fetch.items == 1

    # a write this worker answered raises the seq every read needs, header or not
    mine, own = await store.update_item_at(1, item.id, pb.ItemUpdate(priority=5))
    cache.wrote(own)
    reading = asyncio.create_task(cache.item(item.id, None, lambda: fetch.item(item.id)))
    await asyncio.sleep(0)
    assert not reading.done()
    await follow(cache, store)
    assert (await reading).item == mine
    assert fetch.items == 1

    cache.wait = 0.01
    later, newer = await store.update_item_at(1, item.id, pb.ItemUpdate(priority=4))
    got = await cache.item(item.id, newer, lambda: fetch.item(item.id))  # nobody delivers
    assert got.item == later and fetch.items == 2  # from the store, never the older entry


@pytest.mark.parametrize("every", [1, 4])
async def test_first_pages_follow_every_change_exactly(
    store: InProcessStoreClient, every: int
) -> None:
    """Unfiltered first pages (several sizes) kept by events equal the store's own page at
    the same seq after every change of a random mix of creates, bulk creates, updates and
    deletes, also when a page was filled from a store ahead of the cache, and when the relay
    hands over several changes at once (`every` changes); most reads need no store call."""
    rng = random.Random(8)
    cache = await started(store)
    fetch = Fetches(store)
    live: list[int] = []
    for step in range(150):
        roll = rng.random()
        if roll < 0.45 or not live:
            n = rng.choice([1, 1, 1, 3])
            made = await store.create_items(1, [pb.ItemCreate(title=f"c{step}")] * n)
            live.extend(i.id for i in made.items)
        elif roll < 0.8:
            await store.update_item(1, rng.choice(live), pb.ItemUpdate(priority=step % 100))
        else:
            victim = rng.choice(live[:-5] if len(live) > 8 and rng.random() < 0.7 else live)
            live.remove(victim)
            await store.delete_item(1, victim)
        if rng.random() < 0.3:
            # read before the relay delivered: a fill takes a page ahead of the cache, and
            # the events it already reflects must not be applied to it again
            for limit in (1, 5, 20):
                await cache.first_page(limit, None, lambda limit=limit: fetch.page(limit))
        if step % every != every - 1:
            continue  # the relay has not delivered yet: the cache trails the store
        await follow(cache, store)
        for limit in (1, 5, 20):
            got = await cache.first_page(limit, None, lambda limit=limit: fetch.page(limit))
            want = await store.list_items(spb.ListItems(page=1, limit=limit))
            assert page_json(got.message) == page_json(want), (step, limit)
            assert got.json == orjson_bytes(page_json(want))
    assert fetch.pages < 150 * 3 / 2, fetch.pages


async def test_bounded_in_bytes_least_recently_used_out(store: InProcessStoreClient) -> None:
    """Entries past the byte bound evict the least recently used; 0 bytes keeps nothing."""
    made = await store.create_items(1, [pb.ItemCreate(title=f"i{n}") for n in range(50)])
    one = 3 * made.items[0].ByteSize() + 400
    cache = await started(store, max_bytes=10 * one + one // 2)
    fetch = Fetches(store)
    ids = [i.id for i in made.items]
    for item_id in ids[:10]:
        await cache.item(item_id, None, lambda i=item_id: fetch.item(i))
    await cache.item(ids[0], None, lambda: fetch.item(ids[0]))  # most recent now
    await cache.item(ids[10], None, lambda: fetch.item(ids[10]))  # evicts ids[1]
    assert cache.bytes <= cache.max_bytes
    before = fetch.items
    await cache.item(ids[0], None, lambda: fetch.item(ids[0]))
    assert fetch.items == before
    await cache.item(ids[1], None, lambda: fetch.item(ids[1]))
    assert fetch.items == before + 1
    for item_id in ids:
        await cache.item(item_id, None, lambda i=item_id: fetch.item(i))
        assert cache.bytes <= cache.max_bytes


async def test_reset_forgets_everything_and_drops_fills_in_flight(
    store: InProcessStoreClient,
) -> None:
    cache = await started(store)
    fetch = Fetches(store)
    (item,) = (await store.create_items(1, [pb.ItemCreate(title="a")])).items
    fetch.hold = asyncio.Event()
    filling = asyncio.create_task(cache.item(item.id, None, lambda: fetch.item(item.id)))
    await asyncio.wait_for(fetch.answered.wait(), TIMEOUT)
    cache.on_reset(await store.ping())
    fetch.hold.set()
    await filling
    fetch.hold = None
    assert cache.bytes == 0
    await cache.item(item.id, None, lambda: fetch.item(item.id))
    assert fetch.items == 2


def orjson_bytes(value: object) -> bytes:
    import orjson

    return orjson.dumps(value)


async def test_a_hit_is_answered_at_once_only_as_item_would_answer_it(
    store: InProcessStoreClient,
) -> None:
    """`hit()` (the lean GET's way in, no await) answers exactly when `item()` would answer
    from the cache without waiting, and counts a hit only then; otherwise it leaves the read
    to `item()` (which waits, fetches and counts)."""
    cache = await started(store)
    fetch = Fetches(store)
    (item,) = (await store.create_items(1, [pb.ItemCreate(title="a")])).items
    await follow(cache, store)
    hits = cache._item_hits
    assert cache.hit(item.id, None) is None  # not cached yet
    await cache.item(item.id, None, lambda: fetch.item(item.id))
    before = hits._value.get()
    entry = cache.hit(item.id, cache.seq)
    assert entry is not None and entry.item == item and hits._value.get() == before + 1
    assert cache.hit(item.id, cache.seq + 1) is None  # a seq the cache has not reached
    cache.wrote(cache.seq + 1)  # nor a write of this worker's
    assert cache.hit(item.id, None) is None
    assert hits._value.get() == before + 1
    cache.on_reset(cache.seq + 1)
    assert cache.hit(item.id, None) is None  # forgotten
