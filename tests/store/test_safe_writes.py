"""Safe retries and conditional writes, decided by the single writer inside the batch:
Idempotency-Key (a create happens once per (user, key) within 24 h) and If-Match (a change
applies only to the version the caller saw)."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import Invalid, PreconditionFailed
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.storeclient.inprocess import InProcessStoreClient
from tests.store.conftest import OpenEngine, WriterGate, creates, settle

DAY = 24 * 3600


async def test_a_repeated_key_answers_the_first_result_without_writing(
    store: InProcessStoreClient,
) -> None:
    """The same (user, key, request) answers the items first created, byte for byte, even
    after they changed; no item, event or id is added. Another user's identical key is
    theirs alone."""
    first = await store.create_items(1, creates("a", "b"), "key-1", b"hash-1")
    seq = await store.ping()
    await store.update_item(1, first.items[0].id, pb.ItemUpdate(title="changed"))
    again = await store.create_items(1, creates("a", "b"), "key-1", b"hash-1")
    assert again == first
    assert await store.ping() == seq + 1  # only the update's event
    assert (await store.stats()).total == 2
    theirs = await store.create_items(2, creates("a", "b"), "key-1", b"hash-1")
    assert [i.id for i in theirs.items] == [3, 4]


async def test_a_key_reused_for_another_request_is_invalid(store: InProcessStoreClient) -> None:
    await store.create_items(1, creates("a"), "key", b"hash-a")
    with pytest.raises(Invalid, match="Idempotency-Key"):
        await store.create_items(1, creates("b"), "key", b"hash-b")
    assert (await store.stats()).total == 1


async def test_the_same_key_twice_in_one_batch_creates_once(
    store: InProcessStoreClient, gate: WriterGate
) -> None:
    """Two retries racing each other land in one group commit: the second sees the first's
    key inside the batch and answers its result."""
    async with gate.held():
        tries = [
            asyncio.create_task(store.create_items(1, creates("once"), "k", b"h")) for _ in range(2)
        ]
        await settle()
    first, second = await asyncio.gather(*tries)
    assert gate.sizes[-1] == 2, "the two tries were not in one batch"
    assert first == second and (await store.stats()).total == 1


async def test_keys_are_durable_and_expire_after_24_hours(open_engine: OpenEngine) -> None:
    """A key is written in the same transaction as its items, so it survives a restart with
    them; 24 h later the same key creates again."""
    now = [1_000_000.0]
    engine = open_engine(clock=lambda: now[0])
    first = await InProcessStoreClient(engine).create_items(1, creates("x"), "k", b"h")
    engine.close()

    engine = open_engine(clock=lambda: now[0])
    store = InProcessStoreClient(engine)
    now[0] += DAY - 1
    assert await store.create_items(1, creates("x"), "k", b"h") == first
    now[0] += 2
    later = await store.create_items(1, creates("x"), "k", b"h")
    assert [i.id for i in later.items] == [2]
    assert await store.create_items(1, creates("x"), "k", b"h") == later


async def test_if_match_applies_a_change_only_to_the_version_named(
    store: InProcessStoreClient,
) -> None:
    (item,) = (await store.create_items(1, creates("v1"))).items
    updated = await store.update_item(1, item.id, pb.ItemUpdate(title="v2"), [1])
    assert updated.version == 2
    with pytest.raises(PreconditionFailed, match='"2"'):
        await store.update_item(1, item.id, pb.ItemUpdate(title="lost update"), [1])
    with pytest.raises(PreconditionFailed):
        await store.delete_item(1, item.id, [1])
    assert (await store.get_item(item.id)).title == "v2"
    assert await store.update_item(1, item.id, pb.ItemUpdate(title="v3"), [7, 2]) is not None
    await store.delete_item(1, item.id, [3])
    assert (await store.stats()).total == 0


async def test_two_changes_from_the_same_version_in_one_batch_apply_once(
    store: InProcessStoreClient, gate: WriterGate
) -> None:
    """Both callers read version 1 and send If-Match "1": inside one batch the writer applies
    the first and refuses the second, so no update is lost silently."""
    (item,) = (await store.create_items(1, creates("v1"))).items
    async with gate.held():
        tries = [
            asyncio.create_task(store.update_item(1, item.id, pb.ItemUpdate(title=t), [1]))
            for t in ("mine", "theirs")
        ]
        await settle()
    results = await asyncio.gather(*tries, return_exceptions=True)
    assert gate.sizes[-1] == 2
    assert isinstance(results[0], pb.Item) and results[0].title == "mine"
    assert isinstance(results[1], PreconditionFailed)
    assert (await store.get_item(item.id)).version == 2


async def test_a_request_without_conditions_works_as_before(store: InProcessStoreClient) -> None:
    (item,) = (await store.create_items(1, creates("a"))).items
    assert (await store.update_item(1, item.id, pb.ItemUpdate(title="b"))).version == 2
    assert await store.delete_item(1, item.id) > 0
    page = await store.list_items(spb.ListItems(page=1, limit=10))
    assert page.total == 0
