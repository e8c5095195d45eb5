"""`AsyncClient`: the asyncio Duckcast client (httpx; websockets' asyncio client for
`/ws/items`). The same calls as `Client`, awaited; see service.client.sync for the docs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any, TypeVar

import httpx
from httpx_sse import EventSource, SSEError
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

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


class AsyncClient(ClientBase):
    """A Duckcast client for asyncio; use it with `async with`, or `await aclose()` it.
    Settings: see `ClientBase`; calls: see `service.client.calls`."""

    _http: httpx.AsyncClient

    def _open_http(self, options: dict[str, Any]) -> httpx.AsyncClient:
        return httpx.AsyncClient(**options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send one call, retrying as `self.retry` allows; its result, or a ClientError."""
        attempts = Attempts(self.retry, call)
        while True:
            try:
                request = call.request(self.format, self.token)
                answer = Answer.of(await self._http.request(**request))
            except httpx.TransportError as exc:
                await asyncio.sleep(attempts.after_failure(exc))
                continue
            wait = attempts.after_answer(answer)
            if wait is None:
                return self._finish(call, attempts.result(answer))
            await asyncio.sleep(wait)

    async def iter_items(
        self,
        *,
        limit: int = 100,
        owner_id: int | None = None,
        status: Status | None = None,
        q: str | None = None,
    ) -> AsyncIterator[pb.Item]:
        """Every matching item, newest first, page by page (see calls.PageWalk)."""
        walk = PageWalk()
        while not walk.done:
            page = await self.list_items(walk.page, limit, owner_id=owner_id, status=status, q=q)
            for item in walk.fresh(page):
                yield item

    def subscribe(
        self,
        transport: Transport = "ws",
        *,
        since: int | None = None,
        owner_id: int | None = None,
        status: Status | None = None,
    ) -> AsyncSubscription:
        """Change events, as `Client.subscribe`: `async for event in client.subscribe()`."""
        return AsyncSubscription(self, transport, Resume(since, owner_id, status))


class AsyncSubscription(SubscriptionBase):
    """An async iterator of `DomainEvent`s that reconnects by itself; as `Subscription`."""

    client: AsyncClient

    def __init__(self, client: AsyncClient, transport: Transport, state: Resume) -> None:
        super().__init__(client, transport, state)
        self._events = self._run()

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> pb.DomainEvent:
        return await anext(self._events)

    async def __aenter__(self) -> AsyncSubscription:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def start(self) -> None:
        """Fix the starting point now (it is fixed on first use otherwise)."""
        if self.state.last is None:
            self.state.last = (await self.client.list_items(1, 1)).seq

    async def _run(self) -> AsyncGenerator[pb.DomainEvent, None]:
        await self.start()
        connection = self._sse if self.transport == "sse" else self._ws
        while True:
            try:
                # aclosing: a subscription closed mid-stream closes its connection now, not
                # whenever the garbage collector finalizes the inner generator.
                async with contextlib.aclosing(connection()) as events:
                    async for event in events:
                        yield event
            except DISCONNECTS as exc:
                logger.debug("stream ended (%s); resuming after seq %s", exc, self.state.last)
            await asyncio.sleep(self.state.pause())

    async def _sse(self) -> AsyncGenerator[pb.DomainEvent, None]:
        async with self.client._http.stream(**self._sse_request()) as r:
            content = await r.aread() if r.status_code != 200 else b""
            self._opened_sse(r.status_code, content, r.headers)
            try:
                async for sse in EventSource(r).aiter_sse():
                    if event := self._from_sse(sse):
                        yield event
            except SSEError as exc:
                raise ProtocolError(str(exc)) from None

    async def _ws(self) -> AsyncGenerator[pb.DomainEvent, None]:
        try:
            ws = await ws_connect(**self._ws_request())
        except InvalidStatus as exc:
            raise handshake_refused(exc) from None
        async with ws:
            self.state.opened()
            try:
                async for frame in ws:
                    if event := self._from_frame(frame):
                        yield event
            except ConnectionClosed:
                pass  # how it closed is read below, whichever way the loop ended
        raise ws_closed(ws.close_code, ws.close_reason or "")
