"""What both clients' `subscribe()` share: where a subscription stands across connections, how
an SSE event or a WebSocket frame becomes a `DomainEvent`, and what each way a stream can end
means (reconnect and resume, or give up with an error).

The guarantee: events come out in increasing `seq` order, each at most once, and after any
disconnect the next connection resumes from the last `seq` handed out (`Last-Event-ID` for SSE,
`?since=` for WebSocket), so nothing committed in between is missed. A `RESET` event (the
resume point is older than the server's retained log) is handed to the caller, who reloads
its snapshot; the stream carries on from the reset's `seq`.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

import httpx
import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from httpx_sse import ServerSentEvent
from websockets.exceptions import InvalidHandshake, InvalidStatus

from service.client.errors import (
    ApiError,
    Forbidden,
    ProtocolError,
    SessionExpired,
    StreamRejected,
    api_error,
)
from service.pb import duckcast_pb2 as pb

if TYPE_CHECKING:
    from service.client.base import ClientBase

Transport = Literal["ws", "sse"]
TRANSPORTS: tuple[Transport, ...] = ("ws", "sse")
SSE_PATH = "/api/events"
WS_PATH = "/ws/items"
# The server sends a keep-alive at least every 30 s; silence for this long means a dead peer.
SSE_READ_TIMEOUT = 65.0

SSE_TYPES = {
    "item_created": pb.CREATED,
    "item_updated": pb.UPDATED,
    "item_deleted": pb.DELETED,
    "reset": pb.RESET,
}

# WebSocket close codes that end a subscription for good; any other close is a disconnect
# to resume from (1000/1001 normal, 1006 lost connection, 1011 store unavailable, 1012 worker
# restarting, 1013 not ready yet, 4008 subscriber too slow).
WS_EXPIRED = 4401
WS_POLICY = 1008
WS_FORBIDDEN = 4403


class Disconnected(Exception):
    """This connection ended; the subscription reconnects and resumes."""


class Resume:
    """A subscription's position and its reconnect pacing, across connections."""

    BACKOFF = 0.05
    MAX_BACKOFF = 5.0
    # A connection that lived this long was healthy: the next reconnect is prompt again.
    HEALTHY_SECONDS = 10.0

    def __init__(self, since: int | None, owner_id: int | None, status: str | None) -> None:
        self.last = since  # None until the start point is known
        self.filters = {
            k: str(v) for k, v in (("owner_id", owner_id), ("status", status)) if v is not None
        }
        self.connections = 0
        self.dropped = 0  # events already handed out (or older), not handed out again
        self._failures = 0
        self._opened = 0.0

    def opened(self) -> None:
        self.connections += 1
        self._opened = time.monotonic()

    def admit(self, event: pb.DomainEvent) -> bool:
        """Whether to hand `event` out; moves the position past it."""
        assert self.last is not None
        if event.type == pb.RESET:
            # The server continues from here, even if that is below our position (a resume
            # point the server never issued, e.g. after a restore from backup).
            self.last = event.seq
        elif event.seq <= self.last:
            self.dropped += 1
            return False
        else:
            self.last = event.seq
        self._failures = 0
        return True

    def pause(self) -> float:
        """Seconds to wait before the next connection: prompt after a healthy one, growing
        (with jitter) while connections keep failing, so a fleet does not stampede."""
        if self._opened and time.monotonic() - self._opened > self.HEALTHY_SECONDS:
            self._failures = 0
        self._opened = 0.0
        delay = min(self.MAX_BACKOFF, self.BACKOFF * 2**self._failures)
        self._failures += 1
        return random.uniform(delay / 2, delay)

    def sse_request(self) -> tuple[dict[str, str], dict[str, str]]:
        """Query parameters and headers of the next SSE connection."""
        return dict(self.filters), {"Last-Event-ID": str(self.last)}

    def ws_url(self, base_url: str) -> str:
        scheme, rest = base_url.rstrip("/").split("://", 1)
        ws_scheme = "wss" if scheme == "https" else "ws"
        query = urlencode({**self.filters, "since": self.last})
        return f"{ws_scheme}://{rest}{WS_PATH}?{query}"


def sse_event(name: str, data: str, last_id: str) -> pb.DomainEvent | None:
    """An SSE event as a `DomainEvent`; None for events that carry no change (`connected`,
    and names this client does not know). SSE carries no `stats`, and a delete only the
    deleted item's id."""
    if name == "expired":
        raise SessionExpired(401, "the stream's session expired or was revoked")
    if name in ("overflow", "error"):
        raise Disconnected(f"server ended the stream: {name} {data}")
    kind = SSE_TYPES.get(name)
    if kind is None:
        return None
    try:
        body = orjson.loads(data)
        event = pb.DomainEvent(type=kind, seq=int(last_id))
        if kind == pb.DELETED:
            event.deleted_id = int(body["id"])
        elif kind != pb.RESET:
            json_format.ParseDict(body, event.item, ignore_unknown_fields=True)
    except (orjson.JSONDecodeError, json_format.ParseError, KeyError, TypeError, ValueError):
        raise ProtocolError(f"unreadable SSE event {name!r} (id {last_id!r})") from None
    return event


def ws_event(frame: bytes | str) -> pb.DomainEvent:
    if isinstance(frame, str):
        raise ProtocolError("expected binary DomainEvent frames, got text")
    try:
        return pb.DomainEvent.FromString(frame)
    except DecodeError:
        raise ProtocolError("undecodable DomainEvent frame") from None


def ws_closed(code: int | None, reason: str) -> Disconnected:
    """What a WebSocket close means: raises when the subscription must end."""
    if code == WS_EXPIRED:
        raise SessionExpired(401, reason or "the stream's session expired or was revoked")
    if code == WS_FORBIDDEN:
        raise Forbidden(403, reason or "stream refused")
    if code == WS_POLICY:
        raise StreamRejected(f"stream refused: {reason or 'invalid parameters'} (close {code})")
    return Disconnected(f"closed {code}: {reason}")


def refused(status: int, content: bytes, media: str, headers: dict[str, str]) -> Disconnected:
    """What a refused stream request (SSE, or a WebSocket handshake) means: 5xx and 429 are
    worth another try, any other 4xx is raised."""
    error: ApiError = api_error(status, content, media, headers)
    if status >= 500 or status == 429:
        return Disconnected(str(error))
    raise error


class SubscriptionBase:
    """What the blocking and the asyncio subscriptions share: the connection requests they
    make and how they read what comes back; each adds only its I/O."""

    def __init__(self, client: ClientBase, transport: Transport, state: Resume) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be 'ws' or 'sse', not {transport!r}")
        self.client = client
        self.transport = transport
        self.state = state

    @property
    def last_seq(self) -> int | None:
        """The seq of the last event handed out (where a resume starts)."""
        return self.state.last

    def _auth(self) -> dict[str, str]:
        token = self.client.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _sse_request(self) -> dict[str, Any]:
        """Keyword arguments for httpx's `stream()` opening the next SSE connection."""
        params, headers = self.state.sse_request()
        return {
            "method": "GET",
            "url": SSE_PATH,
            "params": params,
            "headers": headers | self._auth(),
            "timeout": httpx.Timeout(self.client.timeout, read=SSE_READ_TIMEOUT),
        }

    def _ws_request(self) -> dict[str, Any]:
        """Keyword arguments for websockets' `connect()` opening the next WebSocket."""
        return {
            "uri": self.state.ws_url(self.client.url),
            "additional_headers": self._auth(),
            "compression": None,  # the server runs without permessage-deflate
            "open_timeout": self.client.timeout,
        }

    def _opened_sse(self, status: int, content: bytes, headers: httpx.Headers) -> None:
        if status != 200:
            raise refused(status, content, headers.get("content-type", ""), dict(headers))
        self.state.opened()

    def _from_sse(self, sse: ServerSentEvent) -> pb.DomainEvent | None:
        """The event to hand out for this SSE event, if any."""
        event = sse_event(sse.event, sse.data, sse.id)
        return event if event is not None and self.state.admit(event) else None

    def _from_frame(self, frame: bytes | str) -> pb.DomainEvent | None:
        event = ws_event(frame)
        return event if self.state.admit(event) else None


def handshake_refused(exc: InvalidStatus) -> Disconnected:
    """A WebSocket upgrade answered with an HTTP status instead: as `refused`."""
    res = exc.response
    media = res.headers.get("content-type", "")
    return refused(res.status_code, bytes(res.body or b""), media, dict(res.headers))


# A connection that ended in one of these is resumed; anything else ends the subscription.
DISCONNECTS = (Disconnected, httpx.TransportError, InvalidHandshake, OSError)
