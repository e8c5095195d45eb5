"""The store client for workers: one persistent, multiplexed connection to the store process.

- Requests carry ids; a reader task matches answers to waiting futures, so any number of
  requests share the connection (measured ~8x cheaper per call than grpc.aio).
- Deadlines: every call gives up after `timeout` with StoreTimeout (the API answers 503).
- Back-pressure: at most `max_in_flight` calls wait on the store; more wait for a slot, within
  their deadline.
- Reconnection: a lost connection fails the calls in flight with StoreUnavailable; the next call
  reconnects, with exponential backoff between failed attempts so a dead store is not hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from service.errors import StoreTimeout, StoreUnavailable
from service.pb import store_pb2 as spb
from service.storeclient.base import StoreClient
from service.storeclient.handshake import HandshakeError, client_handshake
from service.storeclient.protocol import encode_frame, parse_address, read_frame

logger = logging.getLogger(__name__)

BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
SWEEP_INTERVAL = 0.05  # seconds between deadline checks


class SocketStoreClient(StoreClient):
    def __init__(self, url: str, *, key: bytes, max_in_flight: int = 1024) -> None:
        self.url = url
        self._key = key
        self._address = parse_address(url)
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: dict[int, asyncio.Future[spb.StoreResponse]] = {}
        self._next_id = 1
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_error = ""
        self._deadlines: dict[int, float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
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
            await self._connection()
            req.id = self._next_id
            self._next_id += 1
            req.timeout_ms = max(1, int((deadline - loop.time()) * 1000))
            future: asyncio.Future[spb.StoreResponse] = loop.create_future()
            self._pending[req.id] = future
            self._deadlines[req.id] = deadline
            self._send(encode_frame(req.SerializeToString()))
            if self._sweeper is None:
                self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
            try:
                return await future
            finally:
                self._pending.pop(req.id, None)
                self._deadlines.pop(req.id, None)
        finally:
            self._slots.release()

    def _timed_out(self) -> StoreTimeout:
        return StoreTimeout(f"the store did not answer within {self.timeout:g}s")

    def _sweep(self) -> None:
        # One timer for all calls instead of one per call: deadlines are checked every
        # SWEEP_INTERVAL (a call may overrun its deadline by that much, never more).
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for rid, deadline in list(self._deadlines.items()):
            if deadline <= now:
                future = self._pending.get(rid)
                if future is not None and not future.done():
                    future.set_exception(self._timed_out())
        if self._deadlines:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

    def _send(self, frame: bytes) -> None:
        # Frames written in one loop turn go out in one write (one syscall, not one each).
        self._out.append(frame)
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(out))

    async def _connection(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        async with self._connect_lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            if time.monotonic() < self._retry_at:
                raise StoreUnavailable(f"store unreachable at {self.url}: {self._last_error}")
            try:
                kind, addr = self._address
                if kind == "unix":
                    assert isinstance(addr, str)
                    reader, writer = await asyncio.open_unix_connection(addr)
                else:
                    assert isinstance(addr, tuple)
                    async with asyncio.timeout(self.timeout):
                        reader, writer = await asyncio.open_connection(addr[0], addr[1])
                await _authenticate(reader, writer, self._key, self.timeout)
            except (OSError, TimeoutError, HandshakeError) as exc:
                self._backoff = min(max(self._backoff * 2, BACKOFF_MIN), BACKOFF_MAX)
                self._retry_at = time.monotonic() + self._backoff
                self._last_error = getattr(exc, "strerror", None) or str(exc)
                raise StoreUnavailable(f"store unreachable at {self.url}: {exc}") from None
            self._backoff = 0.0
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_loop(reader, writer))
            logger.info("connected to store at %s", self.url)
            return writer

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                resp = spb.StoreResponse.FromString(await read_frame(reader))
                future = self._pending.get(resp.id)
                if future is not None and not future.done():
                    future.set_result(resp)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("connection to store at %s lost: %s", self.url, exc or type(exc))
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
                self._drop(StoreUnavailable("connection to the store was lost"))

    def _drop(self, exc: StoreUnavailable) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()


async def _authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes, within: float
) -> None:
    try:
        await client_handshake(reader, writer, key, within)
    except BaseException:
        writer.close()
        raise
