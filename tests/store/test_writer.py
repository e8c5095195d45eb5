"""GroupCommitWriter on its own, with an `apply` of our own over a real DuckDB file.

Each op is a string; `Ledger.apply` appends it as a row together with `txid_current()`, so the
table shows which ops committed, in which order, and in which transaction. Modelled on datasette's
`execute_write_fn` tests (tests/test_internals_database.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest

from service.errors import Invalid, StoreTimeout, StoreUnavailable
from service.store.writer import GroupCommitWriter, _Group
from tests.store.conftest import settle, wait_until


class LedgerPlan:
    def __init__(self, results: list[object], on_commit: Callable[[], None]) -> None:
        self.results = results
        self._on_commit = on_commit

    def committed(self) -> None:
        self._on_commit()


class Ledger:
    """`apply` for the writer. Special ops: "hold" parks the writer thread inside the
    transaction until `release()`; "bad..." raises (the whole batch fails); "invalid..." is a
    per-op domain error returned as that op's result."""

    def __init__(self) -> None:
        self.attempts: list[list[str]] = []  # every apply call, committed or not
        self.committed: list[list[str]] = []
        self.fail_after_commit: set[str] = set()  # committed() raises for batches with these
        self._parked = threading.Event()
        self._release = threading.Event()

    def apply(self, con: duckdb.DuckDBPyConnection, ops: Sequence[str]) -> LedgerPlan:
        self.attempts.append(list(ops))
        results: list[object] = []
        for op in ops:
            if op == "hold":
                self._parked.set()
                self._release.wait(30)
            if op.startswith("bad"):
                raise ValueError(op)
            if op.startswith("invalid"):
                results.append(Invalid(op))
                continue
            con.execute("INSERT INTO ledger (op, txid) SELECT ?, txid_current()", [op])
            results.append(f"done:{op}")
        return LedgerPlan(results, lambda: self._on_commit(list(ops)))

    def _on_commit(self, ops: list[str]) -> None:
        self.committed.append(ops)
        if self.fail_after_commit.intersection(ops):
            raise RuntimeError("bookkeeping after COMMIT failed")

    async def parked(self) -> None:
        if not await asyncio.to_thread(self._parked.wait, 10):
            raise AssertionError("the writer never took the 'hold' op")

    def release(self) -> None:
        self._release.set()


@pytest.fixture
def ledger_db(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    con.execute(
        "CREATE SEQUENCE ledger_pos; "
        "CREATE TABLE ledger (pos BIGINT DEFAULT nextval('ledger_pos'), op VARCHAR, txid BIGINT)"
    )
    yield con
    con.close()


StartWriter = Callable[..., tuple[GroupCommitWriter[str], Ledger]]


@pytest.fixture
def start_writer(ledger_db: duckdb.DuckDBPyConnection) -> Iterator[StartWriter]:
    started: list[tuple[GroupCommitWriter[str], Ledger, duckdb.DuckDBPyConnection]] = []

    def _start(**options: Any) -> tuple[GroupCommitWriter[str], Ledger]:
        ledger = Ledger()
        cursor = ledger_db.cursor()  # the writer thread's own connection
        writer: GroupCommitWriter[str] = GroupCommitWriter(cursor, ledger.apply, **options)
        writer.start()
        started.append((writer, ledger, cursor))
        return writer, ledger

    yield _start
    for writer, ledger, cursor in started:
        ledger.release()
        writer.close()
        cursor.close()


def rows(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    return con.execute("SELECT op, txid FROM ledger ORDER BY pos").fetchall()


def ops_in(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [op for op, _ in rows(con)]


async def test_writes_that_arrive_together_commit_in_one_transaction(
    start_writer: StartWriter, ledger_db: duckdb.DuckDBPyConnection
) -> None:
    """Writes queued while the writer is busy are applied as ONE batch in ONE transaction, and
    each caller gets its own result."""
    writer, ledger = start_writer()
    hold = asyncio.create_task(writer.submit("hold"))
    await ledger.parked()
    tasks = [asyncio.create_task(writer.submit(f"w{i}")) for i in range(50)]
    await settle()
    ledger.release()
    assert await hold == "done:hold"
    assert await asyncio.gather(*tasks) == [f"done:w{i}" for i in range(50)]

    assert ledger.attempts == [["hold"], [f"w{i}" for i in range(50)]]
    written = rows(ledger_db)
    assert [op for op, _ in written] == ["hold"] + [f"w{i}" for i in range(50)]
    txids = {txid for op, txid in written if op != "hold"}
    assert len(txids) == 1, "the 50 queued writes should share one transaction"
    assert txids != {written[0][1]}


async def test_max_batch_caps_a_group(start_writer: StartWriter) -> None:
    """No batch is larger than max_batch; the queue is still taken in order."""
    writer, ledger = start_writer(max_batch=3)
    hold = asyncio.create_task(writer.submit("hold"))
    await ledger.parked()
    tasks = [asyncio.create_task(writer.submit(f"w{i}")) for i in range(7)]
    await settle()
    ledger.release()
    await hold
    await asyncio.gather(*tasks)
    assert ledger.attempts == [["hold"], ["w0", "w1", "w2"], ["w3", "w4", "w5"], ["w6"]]


async def test_a_failing_write_fails_alone(
    start_writer: StartWriter, ledger_db: duckdb.DuckDBPyConnection
) -> None:
    """When one op makes the batch raise, the batch is rolled back and retried op by op: the bad
    op's caller gets StoreUnavailable, the others commit, and the writer keeps serving."""
    writer, ledger = start_writer()
    hold = asyncio.create_task(writer.submit("hold"))
    await ledger.parked()
    tasks = [asyncio.create_task(writer.submit(op)) for op in ("a", "bad-b", "c")]
    await settle()
    ledger.release()
    await hold
    a, b, c = await asyncio.gather(*tasks, return_exceptions=True)

    assert (a, c) == ("done:a", "done:c")
    assert isinstance(b, StoreUnavailable)
    assert ops_in(ledger_db) == ["hold", "a", "c"]
    assert ledger.attempts[1] == ["a", "bad-b", "c"]  # first tried together
    assert writer.alive
    assert await writer.submit("d") == "done:d"
    assert ops_in(ledger_db) == ["hold", "a", "c", "d"]


async def test_a_per_op_error_result_does_not_split_the_batch(
    start_writer: StartWriter, ledger_db: duckdb.DuckDBPyConnection
) -> None:
    """An op whose result is a domain error raises that error for its caller only; the batch
    still commits once, with the other ops in it."""
    writer, ledger = start_writer()
    hold = asyncio.create_task(writer.submit("hold"))
    await ledger.parked()
    tasks = [asyncio.create_task(writer.submit(op)) for op in ("a", "invalid-b", "c")]
    await settle()
    ledger.release()
    await hold
    a, b, c = await asyncio.gather(*tasks, return_exceptions=True)
    assert (a, c) == ("done:a", "done:c")
    assert isinstance(b, Invalid) and str(b) == "invalid-b"
    assert ledger.attempts == [["hold"], ["a", "invalid-b", "c"]]
    assert ops_in(ledger_db) == ["hold", "a", "c"]


async def test_a_cancelled_caller_does_not_hurt_the_writer(
    start_writer: StartWriter, ledger_db: duckdb.DuckDBPyConnection
) -> None:
    """Cancelling the task awaiting a write does not un-queue it (it still commits), and the
    writer thread carries on serving later writes."""
    writer, ledger = start_writer()
    hold = asyncio.create_task(writer.submit("hold"))
    await ledger.parked()
    gone = asyncio.create_task(writer.submit("abandoned"))
    await settle()
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    ledger.release()
    await hold
    assert await writer.submit("later") == "done:later"
    assert writer.alive
    assert ops_in(ledger_db) == ["hold", "abandoned", "later"]


async def test_a_caller_whose_loop_closed_does_not_hurt_the_writer(
    start_writer: StartWriter, ledger_db: duckdb.DuckDBPyConnection
) -> None:
    """A write submitted from an event loop in another thread that is closed before the result
    is delivered still commits; the writer survives and serves the next write."""
    writer, ledger = start_writer()
    hold = asyncio.create_task(writer.submit("hold"))
    await ledger.parked()

    def submit_then_close_loop() -> None:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(writer.submit("orphan"))
            loop.run_until_complete(asyncio.sleep(0))  # the op is queued now
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        finally:
            loop.close()

    await asyncio.to_thread(submit_then_close_loop)
    ledger.release()  # the writer now delivers "orphan"'s result to a closed loop
    await hold
    assert await writer.submit("next") == "done:next"
    assert writer.alive
    assert ops_in(ledger_db) == ["hold", "orphan", "next"]


async def test_close_drains_queued_writes_in_order(
    start_writer: StartWriter, ledger_db: duckdb.DuckDBPyConnection
) -> None:
    """close() stops taking new writes but commits everything already queued, in submission
    order, and answers every caller before the thread ends."""
    writer, ledger = start_writer(max_batch=7)
    hold = asyncio.create_task(writer.submit("hold"))
    await ledger.parked()
    tasks = [asyncio.create_task(writer.submit(f"w{i:03}")) for i in range(100)]
    await settle()
    writer.close(timeout=0)  # the stop marker is now queued behind the 100 writes
    with pytest.raises(StoreUnavailable):
        await writer.submit("too-late")
    ledger.release()

    await wait_until(lambda: not writer.alive)
    await hold
    assert await asyncio.gather(*tasks) == [f"done:w{i:03}" for i in range(100)]
    assert ops_in(ledger_db) == ["hold"] + [f"w{i:03}" for i in range(100)]


async def test_a_write_past_its_deadline_is_not_applied(
    start_writer: StartWriter, ledger_db: duckdb.DuckDBPyConnection
) -> None:
    """A write whose deadline passed while it waited in the queue is skipped (never reaches
    apply) and its caller gets StoreTimeout; fresh writes in the same batch commit."""
    writer, ledger = start_writer()
    hold = asyncio.create_task(writer.submit("hold"))
    await ledger.parked()
    deadline = time.time() + 0.05  # wall clock: the worker sets it, in another process
    late = asyncio.create_task(writer.submit("late", deadline))
    fresh = asyncio.create_task(writer.submit("fresh", time.time() + 30))
    await settle()
    await wait_until(lambda: time.time() > deadline)
    ledger.release()
    await hold
    with pytest.raises(StoreTimeout):
        await late
    assert await fresh == "done:fresh"
    assert ledger.attempts == [["hold"], ["fresh"]]
    assert ops_in(ledger_db) == ["hold", "fresh"]


async def test_idle_maintenance_runs_once_writes_go_quiet(start_writer: StartWriter) -> None:
    """on_idle (the engine's CHECKPOINT) runs on the writer's connection after `idle_after` of
    quiet following a write, and not while nothing was written."""
    ran = threading.Event()
    calls: list[duckdb.DuckDBPyConnection] = []

    def on_idle(con: duckdb.DuckDBPyConnection) -> None:
        calls.append(con)
        con.execute("CHECKPOINT")
        ran.set()

    writer, _ = start_writer(idle_after=0.05, on_idle=on_idle)
    assert not await asyncio.to_thread(ran.wait, 0.2)
    await writer.submit("x")
    assert await asyncio.to_thread(ran.wait, 10)
    assert len(calls) == 1


async def test_a_committed_batch_is_never_applied_twice(
    start_writer: StartWriter, ledger_db: duckdb.DuckDBPyConnection
) -> None:
    """Once COMMIT has succeeded the writes are durable: if the post-commit bookkeeping
    (`BatchPlan.committed()`) raises, the writer must not roll back and retry the ops one by one,
    which would apply every op of the batch a second time."""
    writer, ledger = start_writer()
    hold = asyncio.create_task(writer.submit("hold"))
    await ledger.parked()
    tasks = [asyncio.create_task(writer.submit(op)) for op in ("a", "b")]
    await settle()
    ledger.fail_after_commit = {"a"}
    ledger.release()
    await hold
    await asyncio.gather(*tasks, return_exceptions=True)

    assert ops_in(ledger_db) == ["hold", "a", "b"]


async def test_what_committing_schedules_runs_before_the_commit(start_writer: StartWriter) -> None:
    """The store server queues a write's Committing notice in `committing` and writes all of a
    connection's notices in one flush it schedules with call_soon: COMMIT must wait for that
    flush too, or a worker could give up on a write being applied without having heard of it."""
    committed = threading.Event()
    writer, _ = start_writer(on_batch=lambda size, seconds: committed.set())
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    def flush() -> None:
        # Holds the loop a moment: a writer that did not wait for this commits meanwhile.
        seen.append("committed first" if committed.wait(0.3) else "flushed first")

    def committing() -> bool:
        loop.call_soon(flush)
        return True

    assert await writer.submit("x", time.time() + 30, committing) == "done:x"
    assert seen == ["flushed first"]


async def test_concurrent_writers_wait_the_window_to_share_a_commit(
    start_writer: StartWriter,
) -> None:
    """After a batch of several writes (writers are concurrent) the writer waits the commit
    window before gathering, so a write that arrives meanwhile joins the same commit."""
    writer, ledger = start_writer(window=2.0)
    hold = asyncio.create_task(writer.submit("hold"))
    await ledger.parked()
    together = [asyncio.create_task(writer.submit(op)) for op in ("x", "y")]
    await settle()
    ledger.release()
    await asyncio.gather(hold, *together)
    first = asyncio.create_task(writer.submit("a"))
    await settle()  # "a" is queued
    await wait_until(writer._queue.empty)  # the writer took "a": it is waiting the window now
    second = asyncio.create_task(writer.submit("b"))
    assert await asyncio.gather(first, second) == ["done:a", "done:b"]
    assert ledger.attempts[-1] == ["a", "b"]


async def test_a_lone_writer_does_not_wait_the_window(start_writer: StartWriter) -> None:
    """One write at a time (each batch holds one) commits at once: the window is only for
    concurrent writers, it adds no latency to a lone one."""
    writer, ledger = start_writer(window=5.0)
    started = time.monotonic()
    for op in ("a", "b", "c"):
        assert await writer.submit(op) == f"done:{op}"
    assert time.monotonic() - started < 5.0
    assert ledger.attempts == [["a"], ["b"], ["c"]]


async def test_submit_many_answers_each_op_alone_across_batches(
    start_writer: StartWriter, ledger_db: duckdb.DuckDBPyConnection
) -> None:
    """`submit_many` answers one result per op, in order, only once every op has one, even when
    its ops land in several batches (max_batch) and one of them is retried alone: a bad op gets
    its own StoreUnavailable, an invalid one its own error, the others commit."""
    writer, ledger = start_writer(max_batch=3)
    hold = asyncio.create_task(writer.submit("hold"))
    await ledger.parked()
    ops = ["a", "bad-b", "c", "invalid-d", "e"]
    many = asyncio.create_task(writer.submit_many(ops))
    await settle()
    ledger.release()
    await hold
    a, b, c, d, e = await many
    assert (a, c, e) == ("done:a", "done:c", "done:e")
    assert isinstance(b, StoreUnavailable)
    assert isinstance(d, Invalid) and str(d) == "invalid-d"
    assert ledger.attempts[1:] == [["a", "bad-b", "c"], ["a"], ["bad-b"], ["c"], ["invalid-d", "e"]]
    assert ops_in(ledger_db) == ["hold", "a", "c", "e"]


async def test_submit_many_of_nothing_answers_at_once(start_writer: StartWriter) -> None:
    writer, _ = start_writer()
    assert await asyncio.wait_for(writer.submit_many([]), 5) == []


async def test_submit_many_past_its_deadline_applies_none(
    start_writer: StartWriter, ledger_db: duckdb.DuckDBPyConnection
) -> None:
    writer, _ = start_writer()
    results = await writer.submit_many(["a", "b"], deadline=time.time() - 1)
    assert all(isinstance(r, StoreTimeout) for r in results)
    assert ops_in(ledger_db) == []


def test_a_group_counts_each_op_once() -> None:
    """A write delivered twice (the writer's last-resort handler fails a whole batch, some of
    which may already have been answered) must not count twice: the group would answer before
    its other ops, with a hole in its results."""
    loop = asyncio.new_event_loop()
    try:
        group = _Group(loop.create_future(), 2)
        group.fill(0, "first")
        group.fill(0, StoreUnavailable("the write failed in the store"))
        assert not group.future.done()
        group.fill(1, "second")
        assert group.future.result() == ["first", "second"]
    finally:
        loop.close()
