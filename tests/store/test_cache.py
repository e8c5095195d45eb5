"""The item and page caches stay exact: a read issued after a write is acknowledged always
sees that write, even when the cache held the old answer (or a "not found")."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import NotFound
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.storeclient.inprocess import InProcessStoreClient
from tests.store.conftest import creates


async def last_seq(store: InProcessStoreClient) -> int:
    return (await store.events_since(0)).last_seq


async def test_point_reads_see_every_acknowledged_write(store: InProcessStoreClient) -> None:
    """get after create/update/delete returns the new state, although each earlier get had put
    the previous answer (including "not found") in the cache."""
    with pytest.raises(NotFound):
        await store.get_item(1)  # caches "id 1 does not exist"
    (item,) = (await store.create_items(7, creates("first"))).items
    assert item.id == 1
    assert await store.get_item(1) == item

    for version in range(2, 6):
        updated = await store.update_item(7, 1, pb.ItemUpdate(title=f"v{version}"))
        got = await store.get_item(1)
        assert (got.version, got.title) == (version, f"v{version}")
        assert got == updated

    await store.delete_item(7, 1)
    with pytest.raises(NotFound):
        await store.get_item(1)


async def test_list_pages_reflect_writes_immediately_and_carry_the_last_seq(
    store: InProcessStoreClient,
) -> None:
    """A list page read right after a write's acknowledgement includes that write, for filtered
    pages too, and its `seq` is the seq of the last event committed."""
    everything = spb.ListItems(page=1, limit=10)
    completed = spb.ListItems(page=1, limit=10, status="completed")
    mine = spb.ListItems(page=1, limit=10, owner_id=5)
    search = spb.ListItems(page=1, limit=10, q="needle")

    async def pages() -> list[pb.ItemPage]:
        return [await store.list_items(q) for q in (everything, completed, mine, search)]

    empty = await pages()
    assert [p.total for p in empty] == [0, 0, 0, 0] and all(p.seq == 0 for p in empty)

    a, b = (await store.create_items(5, creates("hay", "Needle in hay"))).items
    (c,) = (await store.create_items(6, creates("other"))).items
    all_, done, own, found = await pages()
    assert [i.id for i in all_.items] == [c.id, b.id, a.id] and all_.total == 3
    assert done.total == 0
    assert [i.id for i in own.items] == [b.id, a.id]
    assert [i.id for i in found.items] == [b.id]
    assert {p.seq for p in (all_, done, own, found)} == {await last_seq(store)} == {3}

    await store.update_item(5, a.id, pb.ItemUpdate(status="completed", title="needle too"))
    all_, done, own, found = await pages()
    assert [(i.id, i.version) for i in all_.items] == [(c.id, 1), (b.id, 1), (a.id, 2)]
    assert [i.id for i in done.items] == [a.id]
    assert [i.title for i in own.items] == ["Needle in hay", "needle too"]
    assert [i.id for i in found.items] == [b.id, a.id]
    assert all_.seq == 4

    seq = await store.delete_item(5, b.id)
    all_, done, own, found = await pages()
    assert [i.id for i in all_.items] == [c.id, a.id] and all_.total == 2
    assert [i.id for i in found.items] == [a.id]
    assert all_.seq == seq == await last_seq(store) == 5

    await store.create_user("no-events", "h")  # a write that emits no event
    assert (await store.list_items(everything)).seq == 5


async def test_pagination_totals_follow_writes(store: InProcessStoreClient) -> None:
    """total/pages and the page contents track creates and deletes across page boundaries."""
    await store.create_items(1, creates(*(f"t{i}" for i in range(25))))
    page3 = await store.list_items(spb.ListItems(page=3, limit=10))
    assert (page3.total, page3.pages, [i.id for i in page3.items]) == (25, 3, [5, 4, 3, 2, 1])
    await store.delete_item(1, 25)
    page3 = await store.list_items(spb.ListItems(page=3, limit=10))
    assert (page3.total, page3.pages, [i.id for i in page3.items]) == (24, 3, [4, 3, 2, 1])
    await store.create_items(1, creates("t26"))
    page1 = await store.list_items(spb.ListItems(page=1, limit=10))
    assert page1.items[0].id == 26 and page1.total == 25


async def test_reads_racing_with_commits_never_go_stale(store: InProcessStoreClient) -> None:
    """While readers keep filling the caches from their own cursors, every update acknowledged
    to the writer is what the next get and list return (a reader that loaded rows before a
    commit must not put the older state back into the cache)."""
    (item,) = (await store.create_items(1, creates("v1"))).items
    query = spb.ListItems(page=1, limit=10)
    stop = asyncio.Event()

    async def reader() -> int:
        reads = 0
        while not stop.is_set():
            await store.get_item(item.id)
            await store.list_items(query)
            reads += 1
            # pacing, not waiting: cache hits complete without yielding, and a spinning loop
            # would starve the writer thread of the GIL
            await asyncio.sleep(0.001)
        return reads

    readers = [asyncio.create_task(reader()) for _ in range(4)]
    try:
        for version in range(2, 42):
            updated = await store.update_item(1, item.id, pb.ItemUpdate(title=f"v{version}"))
            assert updated.version == version
            assert (await store.get_item(item.id)).version == version
            assert (await store.list_items(query)).items[0].version == version
    finally:
        stop.set()
        reads = await asyncio.gather(*readers)
    assert sum(reads) > 0
    assert await store.get_item(item.id) == updated
