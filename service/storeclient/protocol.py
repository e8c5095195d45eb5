"""Addresses, framing and error codes of the worker <-> store protocol.

A frame is a 4-byte big-endian length followed by one serialized StoreRequest/StoreResponse.
"""

from __future__ import annotations

import asyncio

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
