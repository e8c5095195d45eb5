"""Addresses, framing and error codes of the worker <-> store protocol.

A frame is a 4-byte big-endian length followed by one serialized StoreRequest/StoreResponse.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from service import errors
from service.pb import store_pb2 as spb

MAX_FRAME = 64 * 1024 * 1024
# The start of the store's INVALID answer to an op it does not know (one newer than it): the
# request was not applied, and a client may fall back to the ops the store has.
UNKNOWN_OPERATION = "unknown store operation"
_HEADER = 4

Code = spb.StoreError.Code
_BY_CODE: dict[int, type[errors.DuckcastError]] = {
    spb.StoreError.NOT_FOUND: errors.NotFound,
    spb.StoreError.FORBIDDEN: errors.Forbidden,
    spb.StoreError.CONFLICT: errors.Conflict,
    spb.StoreError.INVALID: errors.Invalid,
    spb.StoreError.UNAVAILABLE: errors.StoreUnavailable,
    spb.StoreError.TIMEOUT: errors.StoreTimeout,
    spb.StoreError.UNAUTHENTICATED: errors.Unauthorized,
    spb.StoreError.TOO_MANY_REQUESTS: errors.TooManyRequests,
    spb.StoreError.TOO_LARGE: errors.PayloadTooLarge,
    spb.StoreError.PRECONDITION_FAILED: errors.PreconditionFailed,
}
_BY_CLASS = {cls: code for code, cls in _BY_CODE.items()}


class ProtocolError(Exception):
    pass


def encode_frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(_HEADER, "big") + payload


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    size = int.from_bytes(await reader.readexactly(_HEADER), "big")
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME} limit")
    return await reader.readexactly(size)


class FrameProtocol(asyncio.StreamReaderProtocol):
    """A connection's protocol: a StreamReader's until `frames()` (the handshake reads
    through the reader), then each frame is handed to `on_frame` as soon as its last byte
    arrives, in data_received itself. A reader task would cost every answer a turn of the
    event loop between its arrival and its caller, and under fan-out each turn waits behind a
    fan-out turn (README, Fan-out: "Where a POST's time goes")."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._on_frame: Callable[[bytes], None] | None = None
        self._on_lost: Callable[[BaseException | None], None] | None = None
        self._buffer = bytearray()
        self._error: BaseException | None = None
        self._lost = False
        self._connection: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # a stream transport (uvloop's are not asyncio.Transport subclasses)
        self._connection = cast(asyncio.Transport, transport)

    def frames(
        self, on_frame: Callable[[bytes], None], on_lost: Callable[[BaseException | None], None]
    ) -> None:
        """From now on: every frame to `on_frame`; once, when the connection ends, `on_lost`
        (with what ended it: an error, a frame `on_frame` could not take, or None at EOF)."""
        self._on_frame = on_frame
        if self._lost:  # it ended before anyone listened
            on_lost(self._error)
        else:
            self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        if self._on_frame is None:
            super().data_received(data)
            return
        if self._error is not None:
            return  # closing: what follows a bad frame is not read
        buffer = self._buffer
        buffer += data
        try:
            while len(buffer) >= _HEADER:
                size = int.from_bytes(buffer[:_HEADER], "big")
                if size > MAX_FRAME:
                    raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME} limit")
                end = _HEADER + size
                if len(buffer) < end:
                    break
                frame = bytes(buffer[_HEADER:end])
                del buffer[:end]
                self._on_frame(frame)
        except Exception as exc:
            self._error = exc
            buffer.clear()
            if self._connection is not None:
                self._connection.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost = True
        self._error = self._error or exc
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost(self._error)


def error_code(exc: errors.DuckcastError) -> spb.StoreError.Code.ValueType:
    return _BY_CLASS.get(type(exc), spb.StoreError.INTERNAL)  # type: ignore[return-value]


def error_for(err: spb.StoreError) -> errors.DuckcastError:
    return _BY_CODE.get(err.code, errors.DuckcastError)(err.message or "store error")


def raise_for(err: spb.StoreError) -> None:
    raise error_for(err)


def parse_address(url: str) -> tuple[str, str | tuple[str, int]]:
    """`unix:/path/to.sock` or `tcp:host:port`."""
    scheme, _, rest = url.partition(":")
    if scheme == "unix" and rest:
        return "unix", rest
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit():
            return "tcp", (host.strip("[]"), int(port))
    raise ValueError(f"store address must be unix:PATH or tcp:HOST:PORT, not {url!r}")
