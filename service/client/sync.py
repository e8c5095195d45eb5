"""`Client`: the blocking Duckcast client (httpx; websockets' sync client for `/ws/items`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import Any, TypeVar

import httpx
from httpx_sse import EventSource, SSEError
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from service.client.base import ClientBase
from service.client.calls import Answer, Call, PageWalk
from service.client.errors import ProtocolError
from service.client.retry import Attempts
from service.client.stream import (
    DISCONNECTS,
    Resume,
    SubscriptionBase,
    Transport,
    handshake_refused,
    ws_closed,
)
from service.pb import duckcast_pb2 as pb
from service.wire import Status

T = TypeVar("T")
logger = logging.getLogger(__name__)


class Client(ClientBase):
    """A Duckcast client that blocks; use it as a context manager, or `close()` it.
    Settings: see `ClientBase`; calls: see `service.client.calls`."""

    _http: httpx.Client

    def _open_http(self, options: dict[str, Any]) -> httpx.Client:
        return httpx.Client(**options)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send one call, retrying as `self.retry` allows; its result, or a ClientError."""
        attempts = Attempts(self.retry, call)
        while True:
            try:
                answer = Answer.of(self._http.request(**call.request(self.format, self.token)))
            except httpx.TransportError as exc:
                time.sleep(attempts.after_failure(exc))
                continue
            wait = attempts.after_answer(answer)
            if wait is None:
                return self._finish(call, attempts.result(answer))
            time.sleep(wait)

    def iter_items(
        self,
        *,
        limit: int = 100,
        owner_id: int | None = None,
        status: Status | None = None,
        q: str | None = None,
    ) -> Iterator[pb.Item]:
        """Every matching item, newest first, page by page (see calls.PageWalk)."""
        walk = PageWalk()
        while not walk.done:
            yield from walk.fresh(
                self.list_items(walk.page, limit, owner_id=owner_id, status=status, q=q)
            )

    def subscribe(
        self,
        transport: Transport = "ws",
        *,
        since: int | None = None,
        owner_id: int | None = None,
        status: Status | None = None,
    ) -> Subscription:
        """Change events from `since` (default: from when the subscription starts), over a
        WebSocket of protobuf frames ("ws") or Server-Sent Events ("sse"), resumed after any
        disconnect; see service.client.stream for the guarantees."""
        return Subscription(self, transport, Resume(since, owner_id, status))


class Subscription(SubscriptionBase):
    """An iterator of `DomainEvent`s that reconnects by itself. Ends only when you stop
    iterating (or `close()` it), or with a ClientError: `SessionExpired` (token expired or
    revoked), `StreamRejected` (bad parameters), other 4xx answers, `ProtocolError`."""

    client: Client

    def __init__(self, client: Client, transport: Transport, state: Resume) -> None:
        super().__init__(client, transport, state)
        self._events = self._run()

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> pb.DomainEvent:
        return next(self._events)

    def __enter__(self) -> Subscription:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._events.close()

    def start(self) -> None:
        """Fix the starting point now (it is fixed on first use otherwise)."""
        if self.state.last is None:
            self.state.last = self.client.list_items(1, 1).seq

    def _run(self) -> Generator[pb.DomainEvent, None, None]:
        self.start()
        connection = self._sse if self.transport == "sse" else self._ws
        while True:
            try:
                yield from connection()
            except DISCONNECTS as exc:
                logger.debug("stream ended (%s); resuming after seq %s", exc, self.state.last)
            time.sleep(self.state.pause())

    def _sse(self) -> Iterator[pb.DomainEvent]:
        with self.client._http.stream(**self._sse_request()) as r:
            self._opened_sse(r.status_code, r.read() if r.status_code != 200 else b"", r.headers)
            try:
                for sse in EventSource(r).iter_sse():
                    if event := self._from_sse(sse):
                        yield event
            except SSEError as exc:
                raise ProtocolError(str(exc)) from None

    def _ws(self) -> Iterator[pb.DomainEvent]:
        try:
            ws = ws_connect(**self._ws_request())
        except InvalidStatus as exc:
            raise handshake_refused(exc) from None
        with ws:
            self.state.opened()
            try:
                for frame in ws:
                    if event := self._from_frame(frame):
                        yield event
            except ConnectionClosed:
                pass  # how it closed is read below, whichever way the loop ended
        raise ws_closed(ws.close_code, ws.close_reason or "")
