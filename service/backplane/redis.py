"""Redis pub/sub backplane: any number of workers and hosts.

redis-py re-subscribes after a Redis restart but silently drops what was published in between;
so this subscription reconnects itself (with backoff) and yields RESUBSCRIBED each time, and
the consumer repairs from the store. Health checks detect a dead connection that TCP alone
would not report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.backplane.base import RESUBSCRIBED, Backplane
from service.constants import EVENTS_CHANNEL

logger = logging.getLogger(__name__)

BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
PUBLISH_TIMEOUT = 5.0


class RedisBackplane(Backplane):
    kind = "redis"

    def __init__(self, url: str, channel: str = EVENTS_CHANNEL) -> None:
        self.url = url
        self.channel = channel
        self._redis = aioredis.Redis.from_url(
            url,
            health_check_interval=5,
            socket_connect_timeout=2,
            # None, not redis-py's default of 5 s: it enforces that with asyncio.wait_for, which
            # on Python 3.11 can swallow a cancellation and hang shutdown. publish() bounds
            # itself with asyncio.timeout; the subscription's reads have their own timeout.
            socket_timeout=None,
            socket_keepalive=True,
            retry_on_timeout=False,
        )

    async def close(self) -> None:
        await self._redis.aclose()

    async def publish(self, payload: bytes) -> None:
        async with asyncio.timeout(PUBLISH_TIMEOUT):
            await self._redis.publish(self.channel, payload)

    async def subscribe(self) -> AsyncIterator[bytes | None]:
        backoff = 0.0
        lost_at: float | None = None
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.live = True
                backoff = 0.0
                if lost_at is None:
                    logger.info("subscribed to %s", self.channel)
                else:
                    down = time.monotonic() - lost_at
                    logger.info("redis subscription restored after %.1fs", down)
                    lost_at = None
                yield RESUBSCRIBED
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message["type"] == "message":
                        yield message["data"]
            except (RedisError, OSError) as exc:
                self.live = False
                if lost_at is None:
                    lost_at = time.monotonic()
                backoff = min(max(backoff * 2, BACKOFF_MIN), BACKOFF_MAX)
                logger.warning("redis subscription lost (%s); retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
            finally:
                self.live = False
                with contextlib.suppress(RedisError, OSError):  # already gone
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
