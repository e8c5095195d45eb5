"""The engine's group commit: per-op outcomes inside one batch, deadlines, and a writer that
keeps going whatever its hooks do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.config import Settings
from service.errors import Conflict, Forbidden, Invalid, NotFound
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.store.engine import StoreEngine
from service.store.process import build_engine
from service.storeclient.inprocess import InProcessStoreClient
from tests.store.conftest import OpenEngine, WriterGate, creates, settle, wait_until


async def test_one_batch_mixes_successes_and_per_op_errors(
    store: InProcessStoreClient, gate: WriterGate
) -> None:
    """Writes queued together commit as one batch; a duplicate username gets Conflict, a missing
    item NotFound, a stranger's delete Forbidden, a bad field Invalid, and each of those fails
    alone while the other writes of the same batch commit and emit their events in order."""
    alice = await store.create_user("alice", "h")
    a, b = (await store.create_items(alice.id, creates("a", "b"))).items
    seq_before = await store.ping()

    async with gate.held():
        tasks = [
            asyncio.create_task(coro)
            for coro in (
                store.create_user("alice", "h"),  # taken before the batch
                store.create_user("bob", "h"),
                store.create_user("bob", "h"),  # taken earlier in the same batch
                store.update_item(alice.id, 999, pb.ItemUpdate(title="x")),
                store.update_item(alice.id, a.id, pb.ItemUpdate(title="a2")),
                store.delete_item(1, b.id),  # user 1 (seeded) exists but is not the owner
                store.create_items(alice.id, creates("c")),
                store.create_items(alice.id, creates("")),
            )
        ]
        await settle()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert gate.sizes[-1] == len(tasks), f"expected one batch of {len(tasks)}: {gate.sizes}"
    dup_alice, bob, dup_bob, missing, updated, forbidden, created, invalid = results
    assert isinstance(dup_alice, Conflict)
    assert isinstance(bob, pb.User) and bob.username == "bob"
    assert isinstance(dup_bob, Conflict)
    assert isinstance(missing, NotFound)
    assert isinstance(updated, pb.Item) and (updated.title, updated.version) == ("a2", 2)
    assert isinstance(forbidden, Forbidden)
    assert isinstance(created, pb.ItemList) and [i.title for i in created.items] == ["c"]
    assert isinstance(invalid, Invalid)

    # What committed is visible; what failed left nothing behind.
    assert (await store.get_user_by_name("bob")).user == bob
    assert (await store.get_item(a.id)).title == "a2"
    assert (await store.get_item(b.id)) == b
    page = await store.list_items(spb.ListItems(page=1, limit=100))
    assert [i.title for i in page.items] == ["c", "b", "a2"]
    events = (await store.events_since(seq_before)).events
    assert [(e.seq, e.type, e.item.id) for e in events] == [
        (seq_before + 1, pb.UPDATED, a.id),
        (seq_before + 2, pb.CREATED, created.items[0].id),
    ]
    assert (await store.stats()).total == 3


async def test_a_create_of_many_items_is_all_or_nothing(store: InProcessStoreClient) -> None:
    """One invalid entry rejects the whole CreateItems; no id or seq is consumed."""
    with pytest.raises(Invalid):
        await store.create_items(1, [*creates("ok"), pb.ItemCreate(title="x", priority=101)])
    assert await store.ping() == 0
    assert [i.id for i in (await store.create_items(1, creates("first"))).items] == [1]


async def test_a_write_whose_deadline_passed_in_the_queue_is_not_applied(
    engine: StoreEngine, store: InProcessStoreClient, gate: WriterGate
) -> None:
    """A write that waited in the queue past its absolute deadline (set by the worker, not
    measured from when the store read it) is answered TIMEOUT and is not applied: no item, no
    event, no id consumed."""
    deadline = time.time() + 0.03
    req = spb.StoreRequest(
        deadline_us=int(deadline * 1_000_000),
        create_items=spb.CreateItems(actor_id=1, items=creates("late")),
    )
    async with gate.held():
        late = asyncio.create_task(engine.handle(req))
        await settle()
        await wait_until(lambda: time.time() > deadline)
    resp = await late

    assert resp.WhichOneof("result") == "error"
    assert resp.error.code == spb.StoreError.TIMEOUT
    assert await store.ping() == 0
    assert (await store.stats()).total == 0
    assert [i.id for i in (await store.create_items(1, creates("next"))).items] == [1]


def _create(title: str, deadline: float) -> spb.StoreRequest:
    return spb.StoreRequest(
        deadline_us=int(deadline * 1_000_000),
        create_items=spb.CreateItems(actor_id=1, items=creates(title)),
    )


async def test_a_deadline_that_passes_during_the_batch_is_checked_again_before_commit(
    open_engine: OpenEngine,
) -> None:
    """The deadline is checked right before COMMIT too, not only when the batch starts: a
    write whose deadline passes while its batch is being applied (here: while its Committing
    notice goes out, as if the process had been paused) is rolled back and answered TIMEOUT,
    while a write in the same batch with time left commits."""
    now = [1000.0]
    engine = open_engine(clock=lambda: now[0])
    gate = WriterGate(engine)
    store = InProcessStoreClient(engine)
    announced: list[str] = []

    def notice(title: str, advance_to: float | None = None) -> Callable[[], bool]:
        def committing() -> bool:
            announced.append(title)
            if advance_to is not None:
                now[0] = advance_to
            return True

        return committing

    async with gate.held():  # both in one batch
        late = asyncio.create_task(engine.handle(_create("late", 1000.5), notice("late", 1001)))
        roomy = asyncio.create_task(engine.handle(_create("roomy", 1060), notice("roomy")))
        await settle()
    resp_roomy = await roomy
    resp_late = await late

    assert announced == ["late", "roomy"]  # announced together, before the one COMMIT
    assert resp_late.error.code == spb.StoreError.TIMEOUT
    assert [i.title for i in resp_roomy.items.items] == ["roomy"], resp_roomy
    page = await store.list_items(spb.ListItems(page=1, limit=10))
    assert [i.title for i in page.items] == ["roomy"]


async def test_a_write_whose_notice_cannot_be_sent_is_not_applied(
    engine: StoreEngine, store: InProcessStoreClient
) -> None:
    """If the Committing notice cannot reach the worker (its connection is closing), the
    worker could later believe the write was never applied: so it is not."""
    resp = await engine.handle(_create("unannounced", time.time() + 60), lambda: False)
    assert resp.error.code == spb.StoreError.TIMEOUT
    assert (await store.stats()).total == 0
    assert await store.ping() == 0


async def test_a_failing_batch_observer_does_not_stop_the_writer(
    engine: StoreEngine, store: InProcessStoreClient
) -> None:
    """Batch observers (metrics) are hooks, not part of the write: one that raises must not kill
    the writer thread. The write it observed is acknowledged and later writes still work."""
    calls: list[int] = []

    def flaky_observer(size: int, seconds: float) -> None:
        calls.append(size)
        if len(calls) == 1:
            raise RuntimeError("metrics backend hiccup")

    engine.add_batch_observer(flaky_observer)
    first = asyncio.create_task(store.create_items(1, creates("one")))
    await asyncio.wait({first}, timeout=2)
    # ping answers StoreUnavailable("the store's writer thread has stopped") if it died
    assert await store.ping() == 1
    assert first.done(), "the observed write was never acknowledged"
    assert [i.id for i in first.result().items] == [1]
    second = await asyncio.wait_for(store.create_items(1, creates("two")), 2)
    assert [i.id for i in second.items] == [2]


@pytest.mark.parametrize("threads", [1, 3])
def test_duckdb_threads_reach_the_database(tmp_path: Path, threads: int) -> None:
    """DUCKCAST_DUCKDB_THREADS is DuckDB's `threads` in the store's database (1 by default:
    more threads cost CPU per write, README Performance)."""
    settings = Settings(data_dir=tmp_path / "data", duckdb_threads=threads)
    engine = build_engine(settings)
    engine.open()
    try:
        assert engine._con is not None
        row = engine._con.execute("SELECT current_setting('threads')").fetchone()
        assert row is not None and int(row[0]) == threads
    finally:
        engine.close()
    assert Settings().duckdb_threads == 1
