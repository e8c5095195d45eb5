"""subscribe() against a scripted server (the client's external peer), for both clients and
both transports: every disconnect is resumed from the last seq handed out, events come out
once each and in order whatever the server repeats or reorders, a reset is reported, and the
endings that mean "stop" (expired session, refused parameters, 4xx) end the iteration with a
typed error while the others (1012, 1013, 4008, overflow, EOF, 5xx) are retried."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from service.client import (
    AsyncClient,
    Client,
    SessionExpired,
    StreamRejected,
    Transport,
    Unauthorized,
)
from service.pb import duckcast_pb2 as pb
from tests.client.fakes import (
    Connection,
    StreamScript,
    WebSocketPeer,
    api_transport,
    created,
    page_at,
    reset,
)

TRANSPORTS: list[Transport] = ["ws", "sse"]

# Server misbehaviour a client must absorb, and every ending that calls for a resume.
MESSY = [
    Connection([created(11), created(12), created(13)], end="retry"),
    Connection([created(13), created(14), created(12), created(15)], end="overflow"),
    Connection(refuse=503),
    Connection([created(15), created(16)], end="restart"),
    Connection([reset(20), created(21)], end="expired"),
]
MESSY_RESUMES = [10, 13, 15, 15, 16]
MESSY_SEQS = [11, 12, 13, 14, 15, 16, 20, 21]


@contextmanager
def peer(transport: Transport, script: StreamScript) -> Iterator[dict[str, Any]]:
    """Client keyword arguments that reach the scripted server over `transport`."""
    routes = {"GET_/api/items": page_at(10)}
    if transport == "sse":
        yield {"url": "http://fake", "http": {"transport": api_transport(script, **routes)}}
        return
    with WebSocketPeer(script) as ws:
        yield {"url": ws.url, "http": {"transport": api_transport(**routes)}}


def collect_sync(
    transport: Transport, script: StreamScript, **subscribe: Any
) -> tuple[list[pb.DomainEvent], BaseException | None]:
    got: list[pb.DomainEvent] = []
    with peer(transport, script) as kwargs:
        url = kwargs.pop("url")
        with Client(url, token="t", **kwargs) as api, api.subscribe(transport, **subscribe) as sub:
            try:
                got.extend(sub)
            except Exception as exc:
                return got, exc
    return got, None


def collect_async(
    transport: Transport, script: StreamScript, **subscribe: Any
) -> tuple[list[pb.DomainEvent], BaseException | None]:
    async def run() -> tuple[list[pb.DomainEvent], BaseException | None]:
        got: list[pb.DomainEvent] = []
        with peer(transport, script) as kwargs:
            url = kwargs.pop("url")
            async with (
                AsyncClient(url, token="t", **kwargs) as api,
                api.subscribe(transport, **subscribe) as sub,
            ):
                try:
                    async for event in sub:
                        got.append(event)
                except Exception as exc:
                    return got, exc
        return got, None

    return asyncio.run(run())


Collect = Callable[..., tuple[list[pb.DomainEvent], BaseException | None]]
CLIENTS = {"sync": collect_sync, "async": collect_async}


@pytest.fixture(params=list(CLIENTS))
def collect(request: pytest.FixtureRequest) -> Collect:
    return CLIENTS[request.param]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_resumes_from_the_last_seq_once_each_in_order(
    collect: Collect, transport: Transport
) -> None:
    """Starting from the page seq (10), each reconnection asks for the last seq handed out;
    the repeated 13, the late 12 and the repeated 15 are not handed out again; the reset is
    handed out and the stream goes on from its seq; `expired` ends it with SessionExpired."""
    script = StreamScript(list(MESSY))
    got, error = collect(transport, script)
    assert [ev.seq for ev in got] == MESSY_SEQS
    assert [ev.type for ev in got].count(pb.RESET) == 1 and got[6].type == pb.RESET
    assert got[0].item.title == "item 11"
    assert isinstance(error, SessionExpired) and error.status == 401
    assert script.asked == MESSY_RESUMES


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_explicit_since_and_filters_are_sent(collect: Collect, transport: Transport) -> None:
    """`since=` is the first resume point (no page is fetched) and the filters go on every
    connection."""
    script = StreamScript([Connection([created(5)], end="eof"), Connection(end="expired")])
    got, error = collect(transport, script, since=3, owner_id=7, status="active")
    assert [ev.seq for ev in got] == [5]
    assert isinstance(error, SessionExpired)
    assert script.asked == [3, 5]
    assert all("owner_id=7" in p and "status=active" in p for p in script.paths)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_reset_below_the_position_is_where_the_stream_goes_on(
    collect: Collect, transport: Transport
) -> None:
    """A reset to a seq below the last one handed out (the server never issued that resume
    point, e.g. restored from a backup): the events after the reset's seq are handed out."""
    script = StreamScript([Connection([created(11), reset(5), created(6), created(7)], "expired")])
    got, error = collect(transport, script)
    assert [(ev.type, ev.seq) for ev in got] == [
        (pb.CREATED, 11),
        (pb.RESET, 5),
        (pb.CREATED, 6),
        (pb.CREATED, 7),
    ]
    assert isinstance(error, SessionExpired)


def test_websocket_policy_close_is_raised(collect: Collect) -> None:
    """Close 1008 (the server refused the parameters) ends the subscription: StreamRejected,
    no reconnection."""
    script = StreamScript([Connection([created(11)], end="policy")])
    got, error = collect("ws", script)
    assert [ev.seq for ev in got] == [11]
    assert isinstance(error, StreamRejected)
    assert script.asked == [10]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_token_is_raised_not_retried(collect: Collect, transport: Transport) -> None:
    """401 on connecting is Unauthorized at once; 5xx before it was retried."""
    script = StreamScript([Connection(refuse=502), Connection(refuse=401)])
    got, error = collect(transport, script)
    assert got == []
    assert isinstance(error, Unauthorized) and error.status == 401
    assert script.asked == [10, 10]
