"""Brute-force protection for POST /api/login: failed logins counted per username, per client
address and per (username, address), in fixed windows; past a limit, 429 with Retry-After.

The tightest limit is per (username, address), so an attacker hammering one account from one
address is stopped without locking the owner out: the right password from another address
still works. The per-address limit stops one address trying many names; the per-username
limit, much higher, bounds guesses spread over many addresses (at the price of making that
name wait, for at most one window, while such an attack runs).

Counts live in Redis when there is one, so every worker and host shares them; else (and while
Redis is unreachable) in this process's memory, bounded in entries.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.constants import LOGIN_FAILURES_KEY
from service.errors import TooManyRequests

logger = logging.getLogger(__name__)

MEMORY_ENTRIES = 100_000  # counters kept in memory at most (oldest window first out)


@dataclass(frozen=True, slots=True)
class LoginLimits:
    per_name_and_address: int = 5
    per_address: int = 20
    per_name: int = 100
    window_seconds: int = 900


class FailureCounts(Protocol):
    async def get(self, keys: list[str]) -> list[tuple[int, int]]:
        """(failures, seconds until the window ends) per key; (0, 0) if none."""

    async def add(self, keys: list[str], window: int) -> None: ...

    async def clear(self, key: str) -> None: ...


class MemoryCounts:
    def __init__(self, entries: int = MEMORY_ENTRIES) -> None:
        self._entries = entries
        self._counts: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key: (n, ends)

    def _live(self, key: str, now: float) -> tuple[int, float] | None:
        found = self._counts.get(key)
        if found is not None and found[1] <= now:
            del self._counts[key]
            return None
        return found

    async def get(self, keys: list[str]) -> list[tuple[int, int]]:
        now = time.monotonic()
        out = []
        for key in keys:
            found = self._live(key, now)
            out.append((found[0], max(1, int(found[1] - now + 0.999))) if found else (0, 0))
        return out

    async def add(self, keys: list[str], window: int) -> None:
        now = time.monotonic()
        for key in keys:
            found = self._live(key, now)
            self._counts[key] = (found[0] + 1, found[1]) if found else (1, now + window)
            self._counts.move_to_end(key)
        while len(self._counts) > self._entries:
            self._counts.popitem(last=False)

    async def clear(self, key: str) -> None:
        self._counts.pop(key, None)


class RedisCounts:
    """Shared by every worker; falls back to this worker's memory while Redis fails."""

    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self._fallback = MemoryCounts()

    async def get(self, keys: list[str]) -> list[tuple[int, int]]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                    pipe.ttl(key)
                raw = await pipe.execute()
        except (RedisError, OSError) as exc:
            logger.warning("login throttle: Redis failed (%s); counting in memory", exc)
            return await self._fallback.get(keys)
        out = []
        for count, ttl in zip(raw[::2], raw[1::2], strict=True):
            out.append((int(count), max(1, int(ttl))) if count is not None else (0, 0))
        return out

    async def add(self, keys: list[str], window: int) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.incr(key)
                    pipe.expire(key, window, nx=True)  # the window starts at the first failure
                await pipe.execute()
        except (RedisError, OSError) as exc:
            logger.warning("login throttle: Redis failed (%s); counting in memory", exc)
            await self._fallback.add(keys, window)

    async def clear(self, key: str) -> None:
        try:
            await self._redis.delete(key)
        except (RedisError, OSError):
            await self._fallback.clear(key)

    async def close(self) -> None:
        await self._redis.aclose()


def _key(scope: str, *parts: str) -> str:
    subject = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return LOGIN_FAILURES_KEY.format(scope=scope, subject=subject[:32])


class LoginThrottle:
    def __init__(self, counts: FailureCounts, limits: LoginLimits) -> None:
        self.counts = counts
        self.limits = limits

    def _keys(self, username: str, address: str) -> list[tuple[str, int]]:
        lim = self.limits
        return [
            (_key("name+addr", username, address), lim.per_name_and_address),
            (_key("addr", address), lim.per_address),
            (_key("name", username), lim.per_name),
        ]

    async def check(self, username: str, address: str) -> None:
        """TooManyRequests if any limit is reached: checked before the password is, so a
        throttled attempt costs no hashing and tells nothing."""
        keyed = self._keys(username, address)
        counts = await self.counts.get([key for key, _ in keyed])
        waits = [ttl for (_, limit), (n, ttl) in zip(keyed, counts, strict=True) if n >= limit]
        if waits:
            raise TooManyRequests("too many failed logins: try again later", max(waits))

    async def failed(self, username: str, address: str) -> None:
        await self.counts.add(
            [key for key, _ in self._keys(username, address)], self.limits.window_seconds
        )

    async def succeeded(self, username: str, address: str) -> None:
        await self.counts.clear(self._keys(username, address)[0][0])
