"""Serving the engine over framed protobuf on a Unix socket or TCP.

Each connection is multiplexed: requests are handled concurrently and answered as they finish,
tagged with their request id. Back-pressure: at most `max_in_flight` requests per connection
are being handled, and the read loop waits for the socket's send buffer to drain before it
reads more, so a slow or flooding client cannot grow the store's memory.

A write is preceded by a Committing notice (written straight to the socket, before the writer
commits), so a worker that gives up on a write without one knows it was not applied.

Shutdown drains, like uvicorn: stop accepting connections, refuse requests that arrive from
then on (UNAVAILABLE: not done), answer every request already taken (writes commit and are
acknowledged), then close the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from service import hoptrace
from service.logthrottle import ThrottledWarning
from service.metrics import STORE_HANDSHAKES_REFUSED
from service.pb import store_pb2 as spb
from service.store.engine import StoreEngine
from service.storeclient.handshake import PROBE, store_handshake
from service.storeclient.protocol import ProtocolError, encode_frame, parse_address, read_frame

logger = logging.getLogger(__name__)
_refused = ThrottledWarning(logger)

DRAIN_TIMEOUT = 30.0  # seconds close() waits for requests already taken


class StoreServer:
    def __init__(
        self, engine: StoreEngine, listen: str, *, key: bytes, max_in_flight: int = 4096
    ) -> None:
        self._engine = engine
        self._key = key
        self._listen = listen
        self._max_in_flight = max_in_flight
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._draining = False

    async def start(self) -> None:
        kind, addr = parse_address(self._listen)
        if kind == "unix":
            assert isinstance(addr, str)
            Path(addr).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr)  # a stale socket from a crashed store
            self._server = await asyncio.start_unix_server(self._serve, path=addr)
            os.chmod(addr, 0o600)  # and its directory is the owner's only (private_dir)
        else:
            assert isinstance(addr, tuple)
            self._server = await asyncio.start_server(self._serve, addr[0], addr[1])
        logger.info("store listening on %s", self._listen)

    async def close(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        # shutdown: no new connections, refuse new requests, answer those already taken
        self._draining = True
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + drain_timeout
        while self._handlers:  # (a request that waited for a slot may join late)
            if loop.time() >= give_up:
                logger.warning(
                    "%d store requests still running after the drain", len(self._handlers)
                )
                break
            await asyncio.wait(set(self._handlers), timeout=give_up - loop.time())
        await asyncio.sleep(0)  # let the coalesced answers reach the sockets
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        slots = asyncio.Semaphore(self._max_in_flight)
        handlers: set[asyncio.Task[None]] = set()
        out = _Coalescer(writer)
        try:
            refused = await store_handshake(reader, writer, self._key)
            if refused == PROBE:
                return
            if refused is not None:
                STORE_HANDSHAKES_REFUSED.inc()
                peer = writer.get_extra_info("peername") or "a local client"
                _refused("refused a store connection from %s: %s", peer, refused)
                return
            while True:
                frame = await read_frame(reader)
                try:
                    req = spb.StoreRequest.FromString(frame)
                except DecodeError as exc:
                    raise ProtocolError("undecodable StoreRequest") from exc
                if self._draining:
                    out.send(_refusal(req.id))
                    continue
                row = None
                if hoptrace.HOPS is not None and req.WhichOneof("op") in hoptrace.TRACED:
                    row = {"kind": "req", "pid": peer_pid(writer), "rid": req.id}
                    row["read"] = time.monotonic()
                await slots.acquire()
                handler = asyncio.create_task(self._answer(req, out, slots, row))
                for tracked in (handlers, self._handlers):
                    tracked.add(handler)
                    handler.add_done_callback(tracked.discard)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker went away
        except asyncio.CancelledError:
            pass  # close(): the store is stopping; this task ends here, nothing awaits it
        except ProtocolError as exc:
            logger.warning("closing store connection: %s", exc)
        finally:
            # Writes already handed to the writer still commit; only their answers are lost.
            for handler in handlers:
                handler.cancel()
            writer.close()
            self._connections.discard(task)

    async def _answer(
        self,
        req: spb.StoreRequest,
        out: _Coalescer,
        slots: asyncio.Semaphore,
        row: dict[str, Any] | None = None,
    ) -> None:
        sent = False

        def committing() -> bool:
            # once per request: a CreateMany's writes each announce themselves
            nonlocal sent
            if not sent:
                notice = spb.StoreResponse(id=req.id, committing=spb.Committing())
                sent = out.send_notice(encode_frame(notice.SerializeToString()))
                if row is not None:
                    row["announce"] = time.monotonic()
            return sent

        try:
            resp = await self._engine.handle(req, committing)
            if row is not None:
                row["handled"] = time.monotonic()
            out.send(encode_frame(resp.SerializeToString()), row)
        finally:
            slots.release()


def _refusal(request_id: int) -> bytes:
    resp = spb.StoreResponse(id=request_id)
    resp.error.code = spb.StoreError.UNAVAILABLE
    resp.error.message = "the store is shutting down"
    return encode_frame(resp.SerializeToString())


class _Coalescer:
    """Answers finished in one loop turn (a group commit finishes many) leave in one write."""

    __slots__ = ("_frames", "_rows", "_writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._frames: list[bytes] = []
        self._rows: list[dict[str, Any]] = []  # service.hoptrace

    def send(self, frame: bytes, row: dict[str, Any] | None = None) -> None:
        self._frames.append(frame)
        if row is not None:
            self._rows.append(row)
        if len(self._frames) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def send_notice(self, frame: bytes) -> bool:
        """A Committing notice: False if the connection is closing (it would not be sent).
        It leaves with the other notices of its batch in the flush `send` schedules, which the
        writer lets run before it commits (see GroupCommitWriter._announce): one socket write
        per connection and batch, not one per write."""
        if self._writer.is_closing():
            return False
        self.send(frame)
        return True

    def _flush(self) -> None:
        frames, self._frames = self._frames, []
        if not self._writer.is_closing():
            self._writer.write(b"".join(frames))
        if self._rows and hoptrace.HOPS is not None:
            now = time.monotonic()
            for row in self._rows:
                row["flushed"] = now
                hoptrace.HOPS.add(row)
            self._rows.clear()


def peer_pid(writer: asyncio.StreamWriter) -> int:
    """The pid of the process at the other end of a Unix socket (0 over TCP)."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return 0
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])
