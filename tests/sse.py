"""SSE in the tests: every stream is parsed by httpx-sse (what service.client uses), through its
public `EventSource`; nothing here splits `event:`/`data:` lines by hand.

`EventStream` reads a response httpx opened. `SocketSSE` is for what httpx cannot do: a
request on a socket of the test's own, with a small receive buffer set before it connects and
nothing read until the test asks, so the server's sends back up (a client that stopped
reading). h11 reads its HTTP framing; its body goes through the same `EventSource`.

httpx-sse keeps the spec's last event id: an event without an `id:` line reports the previous
event's id. Seqs are therefore read only from change events (`CHANGES`), which carry their own.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import h11
import httpx
from httpx_sse import EventSource, ServerSentEvent

CHANGES = frozenset({"item_created", "item_updated", "item_deleted", "reset"})
READ_SIZE = 1 << 16


def iter_events(source: EventSource) -> Iterator[ServerSentEvent]:
    """The events a browser would dispatch. httpx-sse 0.4 also yields an empty `message` for
    the blank line ending a comment (our `: keep-alive`) once any event had an id
    (florimondmanca/httpx-sse#35); the spec dispatches no event without data."""
    return (event for event in source.iter_sse() if event.data)


async def aiter_events(source: EventSource) -> AsyncIterator[ServerSentEvent]:
    """`iter_events`, for an async response."""
    async for event in source.aiter_sse():
        if event.data:
            yield event


def seq(event: ServerSentEvent) -> int:
    """The seq a change event carries in its `id:` line."""
    assert event.event in CHANGES and event.id, f"not a change event with an id: {event}"
    return int(event.id)


class EventStream:
    """The events of one open SSE response, read one at a time."""

    def __init__(self, response: httpx.Response, timeout: float) -> None:
        self.response = response
        self.timeout = timeout  # for changes_until
        self._events = aiter_events(EventSource(response))

    async def next(self) -> ServerSentEvent | None:
        """The next event, or None when the server ended the response."""
        return await anext(self._events, None)

    async def expect(self, name: str) -> ServerSentEvent:
        event = await self.next()
        assert event is not None, f"stream ended while waiting for {name!r}"
        assert event.event == name, event
        return event

    async def changes_until(self, last_seq: int) -> list[ServerSentEvent]:
        """Every event up to and including the change with seq `last_seq`."""
        got: list[ServerSentEvent] = []
        async with asyncio.timeout(self.timeout):
            while not got or got[-1].event not in CHANGES or seq(got[-1]) < last_seq:
                event = await self.next()
                assert event is not None, f"stream ended after {[e.id for e in got]}"
                got.append(event)
        return got


class SocketSSE:
    """`GET /api/events` on a plain socket: the request is sent at once, the answer read only
    when the test iterates `events()` (by READ_SIZE reads, as they come)."""

    def __init__(self, port: int, headers: dict[str, str], rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            # before connecting: the TCP window offered to the server is sized from it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))  # loopback: the kernel accepts it at once
        self.local_port: int = self.sock.getsockname()[1]
        self.http = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target="/api/events",
            headers=[("Host", "127.0.0.1"), *headers.items()],
        )
        self.sock.sendall(self.http.send(request) + self.http.send(h11.EndOfMessage()))
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    async def events(self) -> AsyncIterator[ServerSentEvent]:
        """The response's events; ends when the server ends the response."""
        head = await self._next()
        assert isinstance(head, h11.Response), head
        assert head.status_code == 200, head
        response = httpx.Response(200, headers=head.headers, content=self._body())
        async for event in aiter_events(EventSource(response)):
            yield event

    async def _body(self) -> AsyncIterator[bytes]:
        while isinstance(part := await self._next(), h11.Data):
            yield bytes(part.data)
        assert isinstance(part, h11.EndOfMessage), part

    async def _next(self) -> h11.Event:
        loop = asyncio.get_running_loop()
        while (event := self.http.next_event()) is h11.NEED_DATA:
            chunk = await loop.sock_recv(self.sock, READ_SIZE)
            assert chunk, "the connection closed before the SSE response ended"
            self.http.receive_data(chunk)
        assert isinstance(event, h11.Event), event  # PAUSED: only after a second request
        return event
