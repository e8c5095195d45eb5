"""The single-writer funnel with group commit.

One thread owns the write connection. Callers `await submit(op)`; the thread takes the first
queued op, gathers whatever else is queued (after waiting `window` for more when the previous
batch held several writes), applies the batch
set-wise in ONE transaction and delivers every result only after COMMIT. If the batch raises,
it is rolled back and each op is retried alone, so a bad write fails alone while the others
commit. Results reach the caller's loop with call_soon_threadsafe; a cancelled caller or a
closed loop is skipped without hurting the thread (the pattern of datasette's
`execute_write_fn` / `_deliver_write_result`).

Deadlines: a write carries its caller's absolute wall-clock deadline. The writer never starts
committing a write whose deadline has passed: it checks before applying the batch and again
right before COMMIT (the apply may have taken long, or the process was paused), and answers
StoreTimeout ("not applied"). A caller that wants to know which writes may still commit passes
`committing`: it is called on the caller's loop right before COMMIT, and COMMIT waits until it
has run, and so has whatever it scheduled there with `call_soon` (the store server queues a
Committing notice to the worker in it, and writes all of a connection's notices at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import duckdb

from service.errors import StoreTimeout, StoreUnavailable

logger = logging.getLogger(__name__)

Op = TypeVar("Op")


class BatchPlan(Protocol):
    """What `apply` did inside the transaction; `committed()` runs after COMMIT succeeds."""

    results: list[object]  # one per op: a value, or a DuckcastError for that op alone

    def committed(self) -> None: ...


ApplyFn = Callable[[duckdb.DuckDBPyConnection, Sequence[Any]], BatchPlan]


_PENDING = object()


class _Group:
    """The results of one `submit_many`, one slot per op, and ONE future for them all: per op
    a future, its callbacks and a gather cost about as much as the rest of the op's Python
    on the store's loop. Filled on the caller's loop; the future is resolved with the list of
    results (values or exceptions) once every op has one, whichever batches they went in."""

    __slots__ = ("future", "missing", "results")

    def __init__(self, future: asyncio.Future[list[object]], size: int) -> None:
        self.future = future
        self.results: list[object] = [_PENDING] * size
        self.missing = size

    def fill(self, index: int, value: object) -> None:
        if self.results[index] is not _PENDING:  # delivered once only, but never count twice
            return
        self.results[index] = value
        self.missing -= 1
        if not self.missing and not self.future.done():
            self.future.set_result(self.results)


@dataclass(slots=True, eq=False)
class _Task(Generic[Op]):
    op: Op
    future: asyncio.Future[Any] | _Group  # a `submit_many` op answers into its group's slot
    loop: asyncio.AbstractEventLoop
    deadline: float | None  # time.time(): wall clock, as the worker that set it
    committing: Callable[[], bool] | None = None
    announced: bool = False  # `committing` ran and returned True (set on the caller's loop)
    index: int = 0  # the op's slot in its group

    def expired(self, now: float) -> bool:
        return self.deadline is not None and self.deadline <= now


class _Expired(Exception):
    """Raised inside the transaction to roll it back: these writes may no longer commit."""

    def __init__(self, tasks: list[_Task[Any]]) -> None:
        super().__init__(f"{len(tasks)} writes past their deadline")
        self.tasks = tasks


_STOP = object()


def _expired() -> StoreTimeout:
    return StoreTimeout("write not applied: its deadline passed before the store could commit it")


def _resolve(task: _Task[Any], value: object) -> None:
    future = task.future
    if isinstance(future, _Group):
        future.fill(task.index, value)
        return
    if future.done():  # the caller gave up (cancelled or timed out)
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


def _resolve_all(answers: list[tuple[_Task[Any], object]]) -> None:
    for task, value in answers:
        _resolve(task, value)


class GroupCommitWriter(Generic[Op]):
    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        apply: ApplyFn,
        *,
        window: float = 0.0,
        max_batch: int = 2000,
        idle_after: float = 5.0,
        on_idle: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._con = con
        self._clock = clock  # wall clock, for deadlines (a test may control it)
        self._apply = apply
        self._window = window
        self._max_batch = max_batch
        self._idle_after = idle_after
        self._on_idle = on_idle
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Task[Op] | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="duckcast-writer", daemon=True)
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def submit(
        self,
        op: Op,
        deadline: float | None = None,
        committing: Callable[[], bool] | None = None,
    ) -> Any:
        """The op's result once committed. `deadline` is wall-clock (time.time()); past it the
        write is not applied (StoreTimeout). `committing` runs on this loop right before the
        COMMIT that may apply the write; if it returns False (its caller cannot be told) the
        write is not applied either."""
        if self._closed:
            raise StoreUnavailable("store is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Task(op, future, loop, deadline, committing, committing is None))
        return await future

    async def submit_many(
        self,
        ops: Sequence[Op],
        deadline: float | None = None,
        committing: Callable[[], bool] | None = None,
    ) -> list[object]:
        """`submit` for several ops at once: one result per op, in order, each a value or the
        exception `submit` would have raised for that op alone (each commits or fails on its
        own, as if submitted alone). They share `deadline` and `committing` (which may then run
        more than once)."""
        if self._closed:
            raise StoreUnavailable("store is shutting down")
        if not ops:
            return []
        loop = asyncio.get_running_loop()
        group = _Group(loop.create_future(), len(ops))
        announced = committing is None
        put = self._queue.put
        for index, op in enumerate(ops):
            put(_Task(op, group, loop, deadline, committing, announced, index))
        return await group.future

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking writes, let everything already queued commit in order, then stop."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        dirty = False
        last_size = 0
        while True:
            try:
                first = self._queue.get(timeout=self._idle_after if dirty else None)
            except queue.Empty:
                dirty = False
                self._idle()
                continue
            if first is _STOP:
                return
            batch, stop = self._gather(first, wait=last_size > 1)
            last_size = len(batch)
            if batch:
                try:
                    self._commit_batch(batch)
                except Exception:  # a bug here must not leave every later write hanging
                    logger.exception("writer failed on a batch")
                    for task in batch:
                        self._deliver(task, StoreUnavailable("the write failed in the store"))
                dirty = True
            if stop:
                return

    def _gather(self, first: object, wait: bool) -> tuple[list[_Task[Op]], bool]:
        """`first` and what queued behind it. With `wait` (the previous batch held several
        writes: writers are concurrent) the window passes first, so that the writes on their
        way join this commit instead of paying for one of their own; a lone writer never
        waits."""
        batch: list[_Task[Op]] = [first]  # type: ignore[list-item]
        if wait and self._window > 0:
            # A sleep, not a timed queue.get: a timed get was seen to hang on this kind of VM.
            time.sleep(self._window)
        while len(batch) < self._max_batch:
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                break
            if task is _STOP:
                return batch, True
            batch.append(task)  # type: ignore[arg-type]
        return batch, False

    def _commit_batch(self, batch: list[_Task[Op]]) -> None:
        now = self._clock()
        live: list[_Task[Op]] = []
        for task in batch:
            if task.expired(now):
                # Nobody waits for it any more: skipping it makes the timeout a clean "not done".
                self._deliver(task, _expired())
            else:
                live.append(task)
        if not live:
            return
        started = time.perf_counter()
        try:
            plan = self._transaction(live)
        except _Expired as exc:
            for task in exc.tasks:
                self._deliver(task, _expired())
            late = {id(t) for t in exc.tasks}
            self._commit_batch([t for t in live if id(t) not in late])
            return
        except Exception:
            if len(live) == 1:
                logger.exception("write failed")
                self._deliver(live[0], StoreUnavailable("the write failed in the store"))
                return
            logger.warning("batch of %d failed; retrying each write alone", len(live))
            for task in live:
                self._commit_batch([task])
            return
        # The batch is durable from here on: nothing below may send it back to be retried,
        # and a failing observer must not stop the callers from hearing about their writes.
        self._after_commit(plan, len(live), time.perf_counter() - started)
        self._deliver_all(zip(live, plan.results, strict=True))

    def _after_commit(self, plan: BatchPlan, size: int, seconds: float) -> None:
        try:
            plan.committed()
        except Exception:
            logger.exception("post-commit step failed (the batch is committed)")
        if self._on_batch is not None:
            try:
                self._on_batch(size, seconds)
            except Exception:
                logger.exception("batch observer failed")

    def _transaction(self, live: list[_Task[Op]]) -> BatchPlan:
        announced = self._announce(live)
        con = self._con
        con.execute("BEGIN TRANSACTION")
        try:
            plan = self._apply(con, [t.op for t in live])
            if announced is not None:
                # Until its notice is out a write must not commit: its worker could give up
                # believing it was never applied. (Only a stalled loop makes this wait long,
                # and then no answer could leave the store anyway.)
                deadlines = [t.deadline for t in live]
                last = None if None in deadlines else max(d for d in deadlines if d is not None)
                announced.wait(None if last is None else max(0.0, last - self._clock()))
            now = self._clock()
            late = [t for t in live if t.expired(now) or not t.announced]
            if late:
                raise _Expired(late)
            con.execute("COMMIT")
        except BaseException:
            # a failed COMMIT has already ended the transaction
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK")
            raise
        return plan

    def _announce(self, live: list[_Task[Op]]) -> threading.Event | None:
        """Run the `committing` callbacks of `live` on their loops; the event is set once
        they have all run (or cannot: a closed loop's writes stay unannounced, not applied)."""
        waiting = [t for t in live if not t.announced]
        if not waiting:
            return None
        by_loop: dict[asyncio.AbstractEventLoop, list[_Task[Op]]] = {}
        for task in waiting:
            by_loop.setdefault(task.loop, []).append(task)
        done = threading.Event()
        remaining = [len(by_loop)]
        lock = threading.Lock()

        def finish() -> None:
            with lock:
                remaining[0] -= 1
                if not remaining[0]:
                    done.set()

        def announce(tasks: list[_Task[Op]]) -> None:
            try:
                for task in tasks:
                    assert task.committing is not None
                    task.announced = task.committing()
            except Exception:
                logger.exception("committing notice failed")
            finally:
                # After what the callbacks scheduled (the store server queues each notice
                # and writes a connection's notices with one call_soon'd flush): callbacks run
                # in the order they were scheduled, so the notices are out before COMMIT.
                asyncio.get_running_loop().call_soon(finish)

        for loop, tasks in by_loop.items():
            try:
                loop.call_soon_threadsafe(announce, tasks)
            except RuntimeError:  # the caller's loop is closed: they stay unannounced
                with lock:
                    remaining[0] -= 1
        if not remaining[0]:
            done.set()
        return done

    def _deliver(self, task: _Task[Op], value: object) -> None:
        # A closed loop raises RuntimeError: nobody is left to tell.
        with contextlib.suppress(RuntimeError):
            task.loop.call_soon_threadsafe(_resolve, task, value)

    def _deliver_all(self, answers: Iterable[tuple[_Task[Op], object]]) -> None:
        # One wake-up per caller loop for the whole batch: call_soon_threadsafe writes to the
        # loop's self-pipe each time, which per write cost as much as the rest of delivering.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Task[Op], object]]] = {}
        for task, value in answers:
            by_loop.setdefault(task.loop, []).append((task, value))
        for loop, resolved in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to tell
                loop.call_soon_threadsafe(_resolve_all, resolved)

    def _idle(self) -> None:
        if self._on_idle is None:
            return
        try:
            self._on_idle(self._con)
        except Exception:
            logger.exception("idle maintenance failed")
