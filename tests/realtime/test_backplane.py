"""The backplane contract (service/realtime/backplane/base.py), one body for every implementation,
plus what only Redis can do: lose its server and come back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from redis.exceptions import RedisError

from service.backplane import RESUBSCRIBED, Backplane
from service.backplane.memory import MemoryBackplane
from service.backplane.redis import RedisBackplane
from tests.conftest import RedisServer
from tests.realtime.conftest import TIMEOUT, until


@pytest.fixture(params=["memory", "redis"])
async def backplane(request: pytest.FixtureRequest) -> AsyncIterator[Backplane]:
    bp: Backplane
    if request.param == "memory":
        bp = MemoryBackplane()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        bp = RedisBackplane(server.url)
    await bp.start()
    try:
        yield bp
    finally:
        await bp.close()


@dataclass
class Consumer:
    """Drains one subscription in a task (a subscription only runs while it is consumed)."""

    received: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    async def next(self) -> bytes | None:
        async with asyncio.timeout(TIMEOUT):
            return await self.received.get()

    async def take(self, n: int) -> list[bytes | None]:
        return [await self.next() for _ in range(n)]


@contextlib.asynccontextmanager
async def consuming(bp: Backplane) -> AsyncIterator[Consumer]:
    consumer = Consumer()
    subscription = bp.subscribe()

    async def pump() -> None:
        async for payload in subscription:
            consumer.received.put_nowait(payload)

    consumer.task = asyncio.create_task(pump())
    try:
        yield consumer
    finally:
        consumer.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.task
        await subscription.aclose()  # type: ignore[attr-defined]


async def test_contract(backplane: Backplane) -> None:
    """A subscription yields RESUBSCRIBED before any payload (so its consumer repairs first);
    every payload published while it is subscribed arrives, in publish order; two subscribers
    each get every payload; `live` is true while subscribed."""
    async with consuming(backplane) as a, consuming(backplane) as b:
        assert await a.next() is RESUBSCRIBED
        assert await b.next() is RESUBSCRIBED
        assert backplane.live

        payloads = [b"payload-%03d" % i for i in range(200)]
        for p in payloads:
            await backplane.publish(p)

        assert await a.take(len(payloads)) == payloads
        assert await b.take(len(payloads)) == payloads
        assert backplane.live
        assert a.received.empty() and b.received.empty()


async def publish_like_the_outbox(bp: Backplane, payload: bytes) -> None:
    """`publish` may raise when the backplane cannot take a payload (a pooled connection that
    died with the old server does, once); its caller retries. Retry a few times, as it does."""
    for attempt in range(5):
        try:
            await bp.publish(payload)
            return
        except RedisError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.05)


async def test_redis_restart_resubscribes(redis_server: RedisServer) -> None:
    """When redis-server goes away, `live` turns false (so /readyz fails); when it is back the
    subscription reconnects by itself, yields RESUBSCRIBED again (the consumer must repair what
    pub/sub dropped meanwhile), `live` is true again, and payloads published after the restart
    arrive."""
    bp = RedisBackplane(redis_server.url)
    try:
        async with consuming(bp) as sub:
            assert await sub.next() is RESUBSCRIBED
            await bp.publish(b"before")
            assert await sub.next() == b"before"
            assert bp.live

            redis_server.stop()
            await until(lambda: not bp.live, what="live goes false while redis is down")

            redis_server.start()
            assert await sub.next() is RESUBSCRIBED
            assert bp.live
            await publish_like_the_outbox(bp, b"after")
            assert await sub.next() == b"after"
            assert sub.received.empty()
    finally:
        await bp.close()
