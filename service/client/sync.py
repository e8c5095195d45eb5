"""`Client`: the blocking Duckcast client (httpx; websockets' sync client for `/ws/items`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import Any, TypeVar

import httpx
from httpx_sse import EventSource, SSEError
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect as ws_connect

from service.client.base import ClientBase
from service.client.calls import Answer, Call, Status
from service.client.errors import ProtocolError
from service.client.retry import Attempts
from service.client.stream import (
    SSE_PATH,
    SSE_READ_TIMEOUT,
    Disconnected,
    Resume,
    Transport,
    refused,
    sse_event,
    ws_closed,
    ws_event,
)
from service.pb import duckcast_pb2 as pb

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
                r = self._http.request(**call.request(self.format, self.token))
            except httpx.TransportError as exc:
                time.sleep(attempts.after_failure(exc))
                continue
            answer = Answer(r.status_code, r.content, r.headers.get("content-type", ""), r.headers)
            wait = attempts.after_answer(answer)
            if wait is None:
                result = attempts.result(answer)
                self._session_changed(call, result)
                return result
            time.sleep(wait)

    def iter_items(
        self,
        *,
        limit: int = 100,
        owner_id: int | None = None,
        status: Status | None = None,
        q: str | None = None,
    ) -> Iterator[pb.Item]:
        """Every matching item, newest first, fetched page by page. Each id comes out once
        (items created meanwhile push older ones to later pages); an item deleted meanwhile
        can shift one onto a page already read, so for an exact copy while others write,
        follow the first page with `subscribe(since=page.seq)` instead."""
        seen: set[int] = set()
        page = 1
        while True:
            result = self.list_items(page, limit, owner_id=owner_id, status=status, q=q)
            for item in result.items:
                if item.id not in seen:
                    seen.add(item.id)
                    yield item
            if page >= result.pages:
                return
            page += 1

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


class Subscription:
    """An iterator of `DomainEvent`s that reconnects by itself. Ends only when you stop
    iterating (or `close()` it), or with a ClientError: `SessionExpired` (token expired or
    revoked), `StreamRejected` (bad parameters), other 4xx answers, `ProtocolError`."""

    def __init__(self, client: Client, transport: Transport, state: Resume) -> None:
        if transport not in ("ws", "sse"):
            raise ValueError(f"transport must be 'ws' or 'sse', not {transport!r}")
        self.client = client
        self.transport = transport
        self.state = state
        self._events = self._run()

    @property
    def last_seq(self) -> int | None:
        """The seq of the last event handed out (where a resume starts)."""
        return self.state.last

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
            except (Disconnected, httpx.TransportError, InvalidHandshake, OSError) as exc:
                logger.debug("stream ended (%s); resuming after seq %s", exc, self.state.last)
            time.sleep(self.state.pause())

    def _auth(self) -> dict[str, str]:
        token = self.client.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _sse(self) -> Iterator[pb.DomainEvent]:
        params, headers = self.state.sse_request()
        timeout = httpx.Timeout(self.client.timeout, read=SSE_READ_TIMEOUT)
        with self.client._http.stream(
            "GET", SSE_PATH, params=params, headers=headers | self._auth(), timeout=timeout
        ) as r:
            if r.status_code != 200:
                media = r.headers.get("content-type", "")
                raise refused(r.status_code, r.read(), media, dict(r.headers))
            self.state.opened()
            try:
                for sse in EventSource(r).iter_sse():
                    event = sse_event(sse.event, sse.data, sse.id)
                    if event is not None and self.state.admit(event):
                        yield event
            except SSEError as exc:
                raise ProtocolError(str(exc)) from None

    def _ws(self) -> Iterator[pb.DomainEvent]:
        try:
            ws = ws_connect(
                self.state.ws_url(self.client.url),
                additional_headers=self._auth(),
                compression=None,
                open_timeout=self.client.timeout,
            )
        except InvalidStatus as exc:
            res = exc.response
            media = res.headers.get("content-type", "")
            raise refused(
                res.status_code, bytes(res.body or b""), media, dict(res.headers)
            ) from None
        with ws:
            self.state.opened()
            try:
                for frame in ws:
                    event = ws_event(frame)
                    if self.state.admit(event):
                        yield event
            except ConnectionClosed:
                pass
        raise ws_closed(ws.close_code, ws.close_reason or "")
