"""A subscription through service.client resumes across the death of the worker holding its
stream, without a gap or a duplicate, over WebSocket and over SSE."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable

import pytest

from loadtests.harness import children, tcp_peers
from service.client import AsyncClient, Transport
from service.pb import duckcast_pb2 as pb
from tests.e2e.client.conftest import Account
from tests.e2e.conftest import DuckcastProcess, is_gunicorn

pytestmark = pytest.mark.e2e


def workers(service: DuckcastProcess) -> list[int]:
    masters = [pid for pid in children(service.pid) if is_gunicorn(pid)]
    assert len(masters) == 1, masters
    return children(masters[0])


def worker_holding_the_stream(service: DuckcastProcess) -> int:
    """The gunicorn worker holding the one open connection to the service: the stream (every
    other client of the test is closed by now, and nothing else talks to this port)."""
    assert service.port is not None
    held = [(pid, port) for pid in workers(service) for port in tcp_peers(pid, service.port)]
    assert len(held) == 1, held
    return held[0][0]


async def until(predicate: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def create(service: DuckcastProcess, account: Account, titles: list[str]) -> list[int]:
    """Create items through a client of its own, closed afterwards (no connection lingers)."""
    async with AsyncClient(service.url, token=account.token) as writer:
        return [(await writer.create_item(title)).id for title in titles]


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_subscription_resumes_across_a_worker_kill(
    service: DuckcastProcess, account: Account, transport: Transport
) -> None:
    """Three creates are received; the worker holding the stream is stopped (SIGSTOP), three
    more are committed through the other worker while the stream is frozen, the stopped
    worker is killed (SIGKILL) and three more are created. The subscription reconnects on its
    own and hands out all nine events exactly once, in seq order, with no gap: the three made
    while it was frozen come from resuming at its last seq."""
    async with AsyncClient(service.url, token=account.token) as reader:
        since = (await reader.list_items(1, 1)).seq
    got: list[pb.DomainEvent] = []
    async with AsyncClient(service.url, token=account.token) as client:
        subscription = client.subscribe(transport, since=since)

        async def consume() -> None:
            async for event in subscription:
                got.append(event)

        task = asyncio.create_task(consume())
        try:
            ids = await create(service, account, [f"{transport} before {n}" for n in range(3)])
            await until(lambda: len(got) >= 3, "the first three events")
            holder = worker_holding_the_stream(service)
            os.kill(holder, signal.SIGSTOP)
            try:
                ids += await create(service, account, [f"{transport} frozen {n}" for n in range(3)])
            finally:
                os.kill(holder, signal.SIGKILL)
            ids += await create(service, account, [f"{transport} after {n}" for n in range(3)])
            await until(lambda: len(got) >= 9, "all nine events")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await subscription.aclose()
    assert [ev.seq for ev in got] == list(range(since + 1, since + 10))
    assert [ev.item.id for ev in got] == ids
    assert all(ev.type == pb.CREATED for ev in got)
    assert subscription.state.connections >= 2, "the stream never reconnected"
