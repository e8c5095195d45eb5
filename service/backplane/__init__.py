"""Backplanes by URL scheme, imported lazily (redis is not needed in embedded mode)."""

from __future__ import annotations

from service.backplane.base import RESUBSCRIBED, Backplane

__all__ = ["RESUBSCRIBED", "Backplane", "backplane_from_url"]


def backplane_from_url(url: str | None, key: bytes | None = None) -> Backplane:
    """`key` (service.keys.Keys.backplane) signs and checks every message that crosses a
    process boundary; required for Redis. The memory backplane never leaves the process."""
    if url is None or url.startswith("memory:"):
        from service.backplane.memory import MemoryBackplane

        return MemoryBackplane()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from service.backplane.redis import RedisBackplane
        from service.backplane.signed import SignedBackplane

        if key is None:
            raise ValueError("a Redis backplane needs the signing key (service.keys)")
        redis = RedisBackplane(url)
        return SignedBackplane(redis, key, redis.channel)
    raise ValueError(f"no backplane for {url!r}: use redis://, rediss:// or memory://")
