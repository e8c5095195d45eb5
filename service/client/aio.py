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
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

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
                r = await self._http.request(**call.request(self.format, self.token))
            except httpx.TransportError as exc:
                await asyncio.sleep(attempts.after_failure(exc))
                continue
            answer = Answer(r.status_code, r.content, r.headers.get("content-type", ""), r.headers)
            wait = attempts.after_answer(answer)
            if wait is None:
                result = attempts.result(answer)
                self._session_changed(call, result)
                return result
            await asyncio.sleep(wait)

    async def iter_items(
        self,
        *,
        limit: int = 100,
        owner_id: int | None = None,
        status: Status | None = None,
        q: str | None = None,
    ) -> AsyncIterator[pb.Item]:
        """Every matching item, newest first, page by page; as `Client.iter_items`."""
        seen: set[int] = set()
        page = 1
        while True:
            result = await self.list_items(page, limit, owner_id=owner_id, status=status, q=q)
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
    ) -> AsyncSubscription:
        """Change events, as `Client.subscribe`: `async for event in client.subscribe()`."""
        return AsyncSubscription(self, transport, Resume(since, owner_id, status))


class AsyncSubscription:
    """An async iterator of `DomainEvent`s that reconnects by itself; as `Subscription`."""

    def __init__(self, client: AsyncClient, transport: Transport, state: Resume) -> None:
        if transport not in ("ws", "sse"):
            raise ValueError(f"transport must be 'ws' or 'sse', not {transport!r}")
        self.client = client
        self.transport = transport
        self.state = state
        self._events = self._run()

    @property
    def last_seq(self) -> int | None:
        return self.state.last

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
            except (Disconnected, httpx.TransportError, InvalidHandshake, OSError) as exc:
                logger.debug("stream ended (%s); resuming after seq %s", exc, self.state.last)
            await asyncio.sleep(self.state.pause())

    def _auth(self) -> dict[str, str]:
        token = self.client.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _sse(self) -> AsyncGenerator[pb.DomainEvent, None]:
        params, headers = self.state.sse_request()
        timeout = httpx.Timeout(self.client.timeout, read=SSE_READ_TIMEOUT)
        async with self.client._http.stream(
            "GET", SSE_PATH, params=params, headers=headers | self._auth(), timeout=timeout
        ) as r:
            if r.status_code != 200:
                media = r.headers.get("content-type", "")
                raise refused(r.status_code, await r.aread(), media, dict(r.headers))
            self.state.opened()
            try:
                async for sse in EventSource(r).aiter_sse():
                    event = sse_event(sse.event, sse.data, sse.id)
                    if event is not None and self.state.admit(event):
                        yield event
            except SSEError as exc:
                raise ProtocolError(str(exc)) from None

    async def _ws(self) -> AsyncGenerator[pb.DomainEvent, None]:
        try:
            ws = await ws_connect(
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
        async with ws:
            self.state.opened()
            try:
                async for frame in ws:
                    event = ws_event(frame)
                    if self.state.admit(event):
                        yield event
            except ConnectionClosed:
                pass
        raise ws_closed(ws.close_code, ws.close_reason or "")
