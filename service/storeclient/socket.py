"""The store client for workers: one persistent, multiplexed connection to the store process.

- Requests carry ids; answers are matched to waiting futures as they arrive (in the socket's
  data_received: FrameProtocol), so any number of requests share the connection (measured ~8x
  cheaper per call than grpc.aio).
- Deadlines travel: each request carries an absolute wall-clock deadline, `COMMIT_MARGIN`
  before the call gives up, and the store never starts committing a write past it. Right before
  it commits a write the store sends a Committing notice. So when a call gives up (StoreTimeout,
  the API answers 503) its write was not applied and never will be; a write that was announced
  is waited for up to IN_DOUBT_WAIT longer, and only if the store stays silent (or goes away)
  after announcing it does the call end in WriteInDoubt (504).
- Back-pressure: at most `max_in_flight` calls wait on the store; more wait for a slot, within
  their deadline.
- Coalescing: the single-item creates that callers start in one loop turn (a worker's
  concurrent POST /api/items) go to the store as one CreateMany request, each still a write of
  its own there (it commits or fails alone): one frame, one Committing notice and one answer
  for all of them, instead of one each, on both sides of the connection.
- Reconnection: a lost connection fails the calls in flight. The next call reconnects; failed
  attempts back off exponentially, one attempt at a time for all callers, so a dead store is
  not hammered. A call that arrives during a backoff waits for the next attempt if it comes
  before its deadline (else it fails at once): once the store is back every waiting call
  proceeds, instead of failing fast until its own backoff ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from service import hoptrace
from service.errors import StoreTimeout, StoreUnavailable, WriteInDoubt
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.storeclient.base import StoreClient, count_request, create_op, observe_latency
from service.storeclient.handshake import HandshakeError, client_handshake
from service.storeclient.protocol import (
    UNKNOWN_OPERATION,
    FrameProtocol,
    encode_frame,
    error_for,
    parse_address,
)

logger = logging.getLogger(__name__)

BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
SWEEP_INTERVAL = 0.05  # seconds between deadline checks
# How much earlier than the call's own deadline the store must have started committing: a
# Committing notice sent just before the store's deadline reaches us before we give up.
# Clocks of the worker and store hosts must agree to well within this.
COMMIT_MARGIN_MAX = 1.0
# How long past its deadline a call waits for a write the store announced it is committing
# (a commit takes milliseconds: only a paused or stalled store makes this wait), then 504.
IN_DOUBT_WAIT = 10.0
_Create = tuple[spb.CreateItems, asyncio.Future[tuple[pb.ItemList, int]]]
MAX_COALESCED = 256  # creates per CreateMany (single-item creates: a few KB each at most)


class SocketStoreClient(StoreClient):
    def __init__(self, url: str, *, key: bytes, max_in_flight: int = 1024) -> None:
        self.url = url
        self._key = key
        self._address = parse_address(url)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[int, asyncio.Future[spb.StoreResponse]] = {}
        self._next_id = 1
        self._writer: asyncio.StreamWriter | None = None
        self._attempt: asyncio.Task[asyncio.StreamWriter] | None = None
        self._attempt_at = 0.0  # loop time of the current or next connection attempt
        self._retry_at = 0.0
        self._backoff = 0.0
        self._last_error = ""
        self.attempts = 0  # connection attempts made (a dead store is not hammered)
        self._lost_at: float | None = None  # when the store became unreachable, for the log
        self._deadlines: dict[int, float] = {}
        self._in_doubt: set[int] = set()  # writes the store announced it is committing
        self._sweeper: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []
        self._creates: list[_Create] = []
        # Single-item creates of a loop turn go as one CreateMany; off for a store without it.
        self.coalesce = True
        self._coalescing: set[asyncio.Task[None]] = set()
        # service.hoptrace (diagnostic, off by default): creates' rows by their future, and
        # when each request's frame was written and its answer read
        self._rows: dict[asyncio.Future[tuple[pb.ItemList, int]], dict[str, Any]] = {}
        self._unsent: list[int] = []
        self._sent_at: dict[int, float] = {}
        self._read_at: dict[int, float] = {}
        # `_send_now` requests: what to do with the answer, run as it is read (`_on_frame`)
        self._on_answer: dict[int, Callable[[], None]] = {}

    @property
    def commit_margin(self) -> float:
        return min(COMMIT_MARGIN_MAX, self.timeout / 4)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        attempt = self._attempt
        if attempt is not None and not attempt.done():
            attempt.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
                await attempt
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        self._drop(StoreUnavailable("store client closed"))

    async def call(self, req: spb.StoreRequest) -> spb.StoreResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._slots.locked():  # rare: only then is a timer worth its cost
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError:
                raise self._timed_out() from None
        else:
            await self._slots.acquire()
        try:
            await self._connection(deadline)
            rid, future = self._begin(req, deadline)
            try:
                return await future
            finally:
                self._end(rid)
        finally:
            self._slots.release()

    def _begin(
        self, req: spb.StoreRequest, deadline: float
    ) -> tuple[int, asyncio.Future[spb.StoreResponse]]:
        """What `call` does once it has a slot and a connection, none of which waits: the
        request gets its id and deadlines and is on its way (with this loop turn's frames)."""
        loop = asyncio.get_running_loop()
        req.id = rid = self._next_id
        self._next_id += 1
        store_deadline = time.time() + deadline - loop.time() - self.commit_margin
        req.deadline_us = int(store_deadline * 1_000_000)
        future: asyncio.Future[spb.StoreResponse] = loop.create_future()
        self._pending[rid] = future
        self._deadlines[rid] = deadline
        self._send(encode_frame(req.SerializeToString()))
        if hoptrace.HOPS is not None and req.WhichOneof("op") in hoptrace.TRACED:
            self._unsent.append(rid)
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
        return rid, future

    def _end(self, rid: int) -> None:
        self._pending.pop(rid, None)
        self._deadlines.pop(rid, None)
        self._in_doubt.discard(rid)

    async def create_items_at(
        self,
        actor_id: int,
        items: Sequence[pb.ItemCreate],
        idempotency_key: str = "",
        request_hash: bytes = b"",
    ) -> tuple[pb.ItemList, int]:
        if len(items) != 1 or not self.coalesce:  # bulk creates (large, rarer) go as they are
            return await super().create_items_at(actor_id, items, idempotency_key, request_hash)
        op = create_op(actor_id, items, idempotency_key, request_hash)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[pb.ItemList, int]] = loop.create_future()
        self._creates.append((op, future))
        if len(self._creates) == 1:
            loop.call_soon(self._send_creates)
        row = hoptrace.POST.get() if hoptrace.HOPS is not None else None
        if row is None:
            return await future
        row["call"] = time.monotonic()
        self._rows[future] = row
        try:
            answer = await future
        finally:
            self._rows.pop(future, None)
        row["resumed"] = time.monotonic()
        return answer

    def _send_creates(self) -> None:
        creates, self._creates = self._creates, []
        for start in range(0, len(creates), MAX_COALESCED):
            chunk = creates[start : start + MAX_COALESCED]
            if not self._send_now(chunk):
                self._spawn(self._create_many(chunk))
        # Now, not a loop turn later: the creates of this turn are all in (see _send_now).
        self._flush()

    def _spawn(self, creating: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(creating)
        self._coalescing.add(task)
        task.add_done_callback(self._coalescing.discard)

    def _send_now(self, creates: list[_Create]) -> bool:
        """The creates' request written in this callback, and their answer handed out as the
        connection's protocol reads it (`_on_frame`): no task on either side. Each task step
        or call_soon is a turn of the worker's loop, and under fan-out a turn waits behind a
        fan-out turn (~1 ms, more when the cores are busy): with tasks, a create's store call
        took four turns to leave and two more to reach its handler after the answer was read
        (README, Fan-out: "Where a POST's time goes"). False when the task path must take
        them: no connection (it may have to wait for one), no free slot, coalescing off."""
        writer = self._writer
        if not self.coalesce or writer is None or writer.is_closing():
            return False
        if not _acquire_now(self._slots):
            return False
        req = _creates_request(creates)
        rid, future = self._begin(req, asyncio.get_running_loop().time() + self.timeout)
        started = time.perf_counter()

        def answered() -> None:
            self._end(rid)
            self._slots.release()
            if future.cancelled():
                outcome: spb.StoreResponse | BaseException = StoreUnavailable("store client closed")
            else:
                outcome = future.exception() or future.result()
            self._created(req, creates, outcome, started)

        self._on_answer[rid] = answered
        # Timeouts and a lost connection fail the future: they come this way.
        future.add_done_callback(lambda _: self._answered(rid))
        return True

    def _answered(self, rid: int) -> None:
        """Once per `_send_now` request: from `_on_frame` as its answer is read, or from its
        future's callback when it failed (deadline, lost connection)."""
        hook = self._on_answer.pop(rid, None)
        if hook is not None:
            hook()

    async def _create_many(self, creates: list[_Create]) -> None:
        """The task path: the request waits for a connection and a slot (`call`)."""
        if len(creates) > 1 and not self.coalesce:  # one by one: each a CreateItems
            await asyncio.gather(*(self._create_many([create]) for create in creates))
            return
        req = _creates_request(creates)
        started = time.perf_counter()
        outcome: spb.StoreResponse | BaseException
        try:
            outcome = await self.call(req)
        except Exception as exc:
            outcome = exc
        self._created(req, creates, outcome, started)

    def _created(
        self,
        req: spb.StoreRequest,
        creates: list[_Create],
        outcome: spb.StoreResponse | BaseException,
        started: float,
    ) -> None:
        """The outcome of a create request, from either path, into its creates' futures,
        counted and timed as `StoreClient._ok` counts every other call."""
        op = req.WhichOneof("op") or "create_items"
        if isinstance(outcome, BaseException):
            if isinstance(outcome, StoreUnavailable):
                count_request(op, "unavailable")
            _fail_all(creates, outcome)
            return
        observe_latency(op, time.perf_counter() - started)
        if outcome.WhichOneof("result") == "error":
            count_request(op, _code(outcome.error))
            exc = error_for(outcome.error)
            if op == "create_many" and str(exc).startswith(UNKNOWN_OPERATION):
                # A store older than CreateMany (a rolling upgrade): it applied nothing.
                logger.warning(
                    "the store at %s does not take CreateMany: creates go one by one", self.url
                )
                self.coalesce = False
                self._spawn(self._create_many(creates))
            else:
                _fail_all(creates, exc)
            return
        count_request(op, "ok")
        if hoptrace.HOPS is not None:
            self._stamp(req.id, creates)
        if op == "create_many":
            self._hand_out(creates, outcome)
        elif not creates[0][1].done():
            creates[0][1].set_result((outcome.items, outcome.seq))

    def _hand_out(self, creates: list[_Create], resp: spb.StoreResponse) -> None:
        """A CreateMany's answers to their creates' futures."""
        answers = resp.created_many.answers
        if len(answers) != len(creates):
            lost = StoreUnavailable(f"the store answered {len(answers)} of {len(creates)} creates")
            _fail_all(creates, lost)
            return
        for (_, future), answer in zip(creates, answers, strict=True):
            outcome = "ok" if answer.WhichOneof("result") != "error" else _code(answer.error)
            count_request("create_items", outcome)
            if future.done():  # the caller gave up (its write may still have committed)
                continue
            if outcome == "ok":
                future.set_result((answer.items, answer.seq))
            else:
                future.set_exception(error_for(answer.error))

    def _stamp(self, rid: int, creates: list[_Create]) -> None:
        """service.hoptrace: the request's hops into the rows of the creates it carried."""
        now = time.monotonic()
        sent, read = self._sent_at.pop(rid, 0.0), self._read_at.pop(rid, 0.0)
        for _, future in creates:
            row = self._rows.get(future)
            if row is not None:
                row.update(pid=os.getpid(), rid=rid, sent=sent, read=read, resolved=now)

    def _timed_out(self) -> StoreTimeout:
        return StoreTimeout(f"the store did not answer within {self.timeout:g}s")

    def _sweep(self) -> None:
        # One timer for all calls instead of one per call: deadlines are checked every
        # SWEEP_INTERVAL (a call may overrun its deadline by that much, never more).
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for rid, deadline in list(self._deadlines.items()):
            if deadline > now:
                continue
            future = self._pending.get(rid)
            if future is None or future.done():
                continue
            if rid not in self._in_doubt:
                future.set_exception(self._timed_out())
            elif deadline + IN_DOUBT_WAIT <= now:
                future.set_exception(
                    WriteInDoubt("the store announced the write, then did not confirm it")
                )
        if self._deadlines:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _send(self, frame: bytes) -> None:
        # Frames written in one loop turn go out in one write (one syscall, not one each).
        self._out.append(frame)
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not out:  # _send_creates flushed them already
            return
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(out))
        if self._unsent:  # service.hoptrace
            now = time.monotonic()
            for rid in self._unsent:
                self._sent_at[rid] = now
            self._unsent.clear()

    async def _connection(self, deadline: float) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        loop = asyncio.get_running_loop()
        attempt = self._attempt
        if attempt is None or attempt.done():
            self._attempt_at = max(loop.time(), self._retry_at)
            if self._attempt_at <= deadline:
                attempt = self._attempt = loop.create_task(self._connect(self._attempt_at))
                # retrieved here so that an attempt nobody waited for logs nothing
                attempt.add_done_callback(lambda t: t.cancelled() or t.exception())
        if attempt is None or attempt.done() or self._attempt_at > deadline:
            raise self._unreachable()
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(attempt)
        except TimeoutError:
            raise self._unreachable() from None

    def _unreachable(self) -> StoreUnavailable:
        return StoreUnavailable(f"store unreachable at {self.url}: {self._last_error}")

    async def _connect(self, at: float) -> asyncio.StreamWriter:
        await asyncio.sleep(max(0.0, at - asyncio.get_running_loop().time()))
        self.attempts += 1
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = FrameProtocol(reader)
        try:
            kind, addr = self._address
            # asyncio.open_unix_connection / open_connection, with our protocol
            if kind == "unix":
                assert isinstance(addr, str)
                transport, _ = await loop.create_unix_connection(lambda: protocol, addr)
            else:
                assert isinstance(addr, tuple)
                async with asyncio.timeout(self.timeout):
                    transport, _ = await loop.create_connection(lambda: protocol, addr[0], addr[1])
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await _authenticate(reader, writer, self._key, self.timeout)
        except (OSError, TimeoutError, HandshakeError) as exc:
            self._lost_at = self._lost_at or time.monotonic()
            self._backoff = min(max(self._backoff * 2, BACKOFF_MIN), BACKOFF_MAX)
            self._retry_at = asyncio.get_running_loop().time() + self._backoff
            self._last_error = getattr(exc, "strerror", None) or str(exc)
            raise self._unreachable() from None
        self._backoff = 0.0
        self._retry_at = 0.0
        self._writer = writer
        protocol.frames(self._on_frame, lambda exc: self._lost(writer, exc))
        if self._lost_at is None:
            logger.info("connected to store at %s", self.url)
        else:
            down = time.monotonic() - self._lost_at
            logger.info("store connection restored after %.1fs (%s)", down, self.url)
            self._lost_at = None
        return writer

    def _on_frame(self, frame: bytes) -> None:
        """Each answer as it arrives (FrameProtocol: in the socket's data_received)."""
        resp = spb.StoreResponse.FromString(frame)
        future = self._pending.get(resp.id)
        if future is None or future.done():
            return
        if resp.WhichOneof("result") == "committing":
            self._in_doubt.add(resp.id)
            return
        if resp.id in self._sent_at:  # service.hoptrace
            self._read_at[resp.id] = time.monotonic()
        future.set_result(resp)
        if self._on_answer:
            self._answered(resp.id)

    def _lost(self, writer: asyncio.StreamWriter, exc: BaseException | None) -> None:
        writer.close()
        if self._writer is not writer:  # closed by us (close()), or already replaced
            return
        why = exc or "closed by the store"
        logger.warning("connection to store at %s lost: %s", self.url, why)
        self._writer = None
        self._lost_at = time.monotonic()
        self._drop(StoreUnavailable("connection to the store was lost"))

    def _drop(self, exc: StoreUnavailable) -> None:
        for rid, future in self._pending.items():
            if future.done():
                continue
            if rid in self._in_doubt:
                future.set_exception(WriteInDoubt("the store went away while committing the write"))
            else:
                future.set_exception(exc)
        self._pending.clear()


def _acquire_now(slots: asyncio.Semaphore) -> bool:
    """A free slot taken without waiting, else False. Semaphore has no such call, but its
    acquire() returns without suspending when not locked(): its first step finishes it."""
    if slots.locked():
        return False
    step = slots.acquire()
    try:
        step.send(None)
    except StopIteration:
        return True
    step.close()  # not reached (it would have suspended): give the wait up
    return False


def _fail_all(creates: list[_Create], exc: BaseException) -> None:
    for _, future in creates:
        if not future.done():
            future.set_exception(exc)


def _code(err: spb.StoreError) -> str:
    return spb.StoreError.Code.Name(err.code).lower()


async def _authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes, within: float
) -> None:
    try:
        await client_handshake(reader, writer, key, within)
    except BaseException:
        writer.close()
        raise


def _creates_request(creates: list[_Create]) -> spb.StoreRequest:
    if len(creates) == 1:
        return spb.StoreRequest(create_items=creates[0][0])
    return spb.StoreRequest(create_many=spb.CreateMany(creates=[op for op, _ in creates]))
