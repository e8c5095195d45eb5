"""Backplanes by URL scheme, imported lazily (redis is not needed in embedded mode)."""

from __future__ import annotations

from service.backplane.base import RESUBSCRIBED, Backplane

__all__ = ["RESUBSCRIBED", "Backplane", "backplane_from_url"]


def backplane_from_url(url: str | None) -> Backplane:
    if url is None or url.startswith("memory:"):
        from service.backplane.memory import MemoryBackplane

        return MemoryBackplane()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from service.backplane.redis import RedisBackplane

        return RedisBackplane(url)
    raise ValueError(f"no backplane for {url!r}: use redis://, rediss:// or memory://")
