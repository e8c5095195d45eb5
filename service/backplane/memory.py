"""In-process backplane for embedded mode: one process, no Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from service.backplane.base import RESUBSCRIBED, Backplane


class MemoryBackplane(Backplane):
    kind = "memory"

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[bytes | None]] = set()
        self.live = True

    async def publish(self, payload: bytes) -> None:
        for queue in self._queues:
            queue.put_nowait(payload)

    async def subscribe(self) -> AsyncIterator[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._queues.add(queue)
        try:
            yield RESUBSCRIBED
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)
