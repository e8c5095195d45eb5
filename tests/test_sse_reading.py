"""The tests read SSE through tests/sse.py as a browser's EventSource would: a keep-alive
comment after an event with an id dispatches nothing, and a change's seq is its own `id:`."""

from __future__ import annotations

import httpx
from httpx_sse import EventSource

from tests.sse import EventStream, iter_events, seq

STREAM = (
    b'retry: 2000\nevent: connected\ndata: {"seq": 6}\n\n'
    b'id: 7\nevent: item_created\ndata: {"id": 1}\n\n'
    b": keep-alive\n\n"
    b'event: overflow\ndata: {"reason": "too slow"}\n\n'
)


def response(body: bytes) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)


def test_a_keep_alive_after_an_id_dispatches_no_event() -> None:
    events = list(iter_events(EventSource(response(STREAM))))
    assert [e.event for e in events] == ["connected", "item_created", "overflow"]
    assert seq(events[1]) == 7
    assert events[0].retry == 2000


async def test_event_stream_reads_the_same_events_then_the_end() -> None:
    stream = EventStream(response(STREAM), timeout=1.0)
    for name in ("connected", "item_created", "overflow"):
        await stream.expect(name)
    assert await stream.next() is None
