"""The event log: `seq` gap-free in commit order, the same answers from memory and from the
database, `reset` beyond the retained log, and state that survives a restart."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import duckdb

from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.store.engine import StoreEngine
from service.storeclient.inprocess import InProcessStoreClient
from tests.store.conftest import OpenEngine, creates


async def all_items(store: InProcessStoreClient) -> dict[int, pb.Item]:
    found: dict[int, pb.Item] = {}
    page_no = 1
    while True:
        page = await store.list_items(spb.ListItems(page=page_no, limit=100))
        found.update((i.id, i) for i in page.items)
        if page_no >= page.pages:
            return found
        page_no += 1


def replay(events: list[pb.DomainEvent]) -> dict[int, pb.Item]:
    """Apply events in order, checking each is a legal next step for its item."""
    state: dict[int, pb.Item] = {}
    for e in events:
        if e.type == pb.CREATED:
            assert e.item.id not in state and e.item.version == 1, e
            state[e.item.id] = e.item
        elif e.type == pb.UPDATED:
            assert state[e.item.id].version + 1 == e.item.version, e
            state[e.item.id] = e.item
        else:
            assert e.type == pb.DELETED and e.deleted_id == e.item.id, e
            assert state.pop(e.deleted_id) == e.item, e
        assert e.stats.total == len(state), e
    return state


async def test_seq_is_gap_free_and_in_commit_order_under_concurrent_writers(
    store: InProcessStoreClient,
) -> None:
    """20 concurrent writers creating, updating and deleting: the log holds exactly one event per
    change, numbered 1..N without gaps, each of the right type carrying the acknowledged item,
    and replaying it in seq order yields exactly the items that list/get return."""
    rng = random.Random(7)
    expected: dict[tuple[int, int, int], pb.Item] = {}  # (type, item id, version) -> item
    deleted_at: dict[int, int] = {}  # seq returned by delete -> item id

    async def writer(actor: int) -> None:
        created = (await store.create_items(actor, creates("x", "y", "z", priority=actor))).items
        for item in created:
            expected[(pb.CREATED, item.id, 1)] = item
        for round_ in range(2):
            for item in created:
                if rng.random() < 0.5:
                    await asyncio.sleep(0)
                new = await store.update_item(
                    actor, item.id, pb.ItemUpdate(title=f"{actor}-{round_}", priority=round_)
                )
                expected[(pb.UPDATED, new.id, new.version)] = new
        victim = created[rng.randrange(3)]
        deleted_at[await store.delete_item(actor, victim.id)] = victim.id

    await asyncio.gather(*(writer(actor) for actor in range(1, 21)))

    batch = await store.events_since(0, 5000)
    events = list(batch.events)
    n = 20 * (3 + 6 + 1)
    assert [e.seq for e in events] == list(range(1, n + 1))
    assert batch.last_seq == n and not batch.reset
    for e in events:
        if e.type == pb.DELETED:
            assert deleted_at.pop(e.seq) == e.deleted_id
        else:
            assert expected.pop((e.type, e.item.id, e.item.version)) == e.item
    assert expected == {} and deleted_at == {}

    state = replay(events)
    assert await all_items(store) == state
    for item_id, item in state.items():
        assert await store.get_item(item_id) == item
    assert events[-1].stats == await store.stats()
    assert await store.ping() == n


async def write_some_history(store: InProcessStoreClient, actor: int, rounds: int) -> None:
    for r in range(rounds):
        items = (await store.create_items(actor, creates(f"a{r}", f"b{r}", f"c{r}"))).items
        await store.update_item(actor, items[0].id, pb.ItemUpdate(status="completed"))
        await store.delete_item(actor, items[1].id)


QUERIES = [(after, limit) for after in (0, 1, 17, 49, 59, 60) for limit in (0, 1, 7, 5000)]


async def test_events_from_memory_and_from_the_database_are_identical(
    open_engine: OpenEngine,
) -> None:
    """events_since answers the same whether it is served from the in-memory ring (events
    committed by this engine) or read from DuckDB (a freshly opened engine, ring empty), and a
    range spanning both is continuous."""
    engine = open_engine()
    store = InProcessStoreClient(engine)
    await write_some_history(store, 1, 12)  # 60 events
    from_ring = [await store.events_since(after, limit) for after, limit in QUERIES]
    assert len(from_ring[0].events) == 60
    engine.close()

    store = InProcessStoreClient(open_engine())
    from_db = [await store.events_since(after, limit) for after, limit in QUERIES]
    assert from_db == from_ring

    await write_some_history(store, 2, 4)  # seq 61..80, only these are in the new ring
    newer = await store.events_since(60)
    assert [e.seq for e in newer.events] == list(range(61, 81))
    everything = await store.events_since(0)
    assert list(everything.events) == list(from_ring[0].events) + list(newer.events)
    assert everything.last_seq == newer.last_seq == 80


async def test_reset_when_the_cursor_is_older_than_retention_or_ahead_of_the_log(
    open_engine: OpenEngine, db_path: Path
) -> None:
    """With retention 100, once the log is trimmed a cursor before the oldest retained event gets
    `reset` (not a silent gap); so does a cursor past the last seq. The newest `retention`
    events stay available, and a restart gives the same answers."""
    engine = open_engine(event_retention=100)
    store = InProcessStoreClient(engine)
    for chunk in range(6):
        await store.create_items(1, creates(*(f"t{chunk}-{i}" for i in range(50))))
    last = await store.ping()
    assert last == 300

    async def check(store: InProcessStoreClient) -> None:
        old = await store.events_since(0)
        assert old.reset and not old.events and old.last_seq == last
        ahead = await store.events_since(last + 5)
        assert ahead.reset and not ahead.events
        caught_up = await store.events_since(last)
        assert not caught_up.reset and not caught_up.events
        recent = await store.events_since(last - 100)
        assert not recent.reset
        assert [e.seq for e in recent.events] == list(range(last - 99, last + 1))

    await check(store)
    engine.close()
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        kept = con.execute("SELECT count(*), max(seq) FROM events").fetchone()
    finally:
        con.close()
    assert kept is not None and kept[1] == last and kept[0] < last, "the log was never trimmed"
    await check(InProcessStoreClient(open_engine(event_retention=100)))


async def test_ids_seq_and_stats_survive_a_restart(open_engine: OpenEngine) -> None:
    """Closing and reopening on the same file continues item ids (never reusing the id of a
    deleted newest item), user ids and seq, and reports the same stats and data."""
    engine = open_engine()
    store = InProcessStoreClient(engine)
    alice = await store.create_user("alice", "hash")
    items = (await store.create_items(alice.id, creates("a", "b", "c", priority=30))).items
    await store.update_item(alice.id, items[0].id, pb.ItemUpdate(status="completed"))
    seq = await store.delete_item(alice.id, items[2].id)  # the newest item
    stats = await store.stats()
    kept = await all_items(store)
    engine.close()

    store = InProcessStoreClient(open_engine())
    assert await store.ping() == seq
    assert await store.stats() == stats
    assert await all_items(store) == kept
    assert (await store.get_user_by_name("alice")).password_hash == "hash"
    again = (await store.create_items(alice.id, creates("d"))).items
    assert [i.id for i in again] == [items[2].id + 1]
    assert (await store.create_user("bob", "h")).id == alice.id + 1
    event = (await store.events_since(seq)).events
    assert [(e.seq, e.type, e.item.id) for e in event] == [(seq + 1, pb.CREATED, again[0].id)]


async def test_after_a_crash_item_ids_continue_past_every_id_issued(
    open_engine: OpenEngine, db_path: Path, tmp_path: Path
) -> None:
    """Item ids are reserved in blocks (id_counters is not written by every batch): a store
    killed without closing continues past every id it issued, even one of a deleted newest item
    committed after the last reservation. The crash is the database and WAL files as they are
    on disk after the acknowledged writes, copied while the engine is still open."""
    engine = open_engine()
    store = InProcessStoreClient(engine)
    first = (await store.create_items(1, creates("a"))).items  # takes a reservation
    later = (await store.create_items(1, creates("b", "c"))).items  # inside it: no UPDATE
    await store.delete_item(1, later[-1].id)
    crashed = tmp_path / "crashed" / db_path.name
    crashed.parent.mkdir()
    for suffix in ("", ".wal"):
        source = db_path.with_name(db_path.name + suffix)
        if source.exists():
            crashed.with_name(crashed.name + suffix).write_bytes(source.read_bytes())
    engine.close()

    after = StoreEngine(crashed, read_threads=1)
    after.open()
    try:
        again = (await InProcessStoreClient(after).create_items(1, creates("d"))).items
    finally:
        after.close()
    assert again[0].id > max(i.id for i in (*first, *later))


async def test_a_seq_a_page_already_showed_is_not_reset_before_the_writer_counted_it(
    open_engine: OpenEngine,
) -> None:
    """A list page can show a commit's seq in the moment between COMMIT and the writer's
    bookkeeping for it; a client that subscribes from that seq must not get `reset` (as for
    a seq the store never issued). Simulated by a row in the log the writer has not counted."""
    engine = open_engine()
    store = InProcessStoreClient(engine)
    await store.create_items(1, creates("a"))
    event = pb.DomainEvent(type=pb.CREATED, seq=2)
    engine._con.cursor().execute("INSERT INTO events VALUES (2, ?)", [event.SerializeToString()])  # type: ignore[union-attr]
    batch = await store.events_since(2, 10)
    assert (batch.reset, batch.last_seq, list(batch.events)) == (False, 2, [])
    assert (await store.events_since(3, 10)).reset  # never issued: reset
