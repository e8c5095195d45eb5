"""Embedded mode: the engine and its outbox publisher inside the API process (one process,
a memory backplane, no Redis), behind the same `handle()` the socket server calls."""

from __future__ import annotations

import asyncio

from service.backplane import Backplane
from service.config import Settings
from service.metrics import observe_batch
from service.pb import store_pb2 as spb
from service.store.outbox import OutboxPublisher
from service.store.process import build_engine


class EmbeddedStore:
    def __init__(self, settings: Settings, backplane: Backplane) -> None:
        self.engine = build_engine(settings)
        self._publisher = OutboxPublisher(
            self.engine, backplane, settings.data_dir / "published_seq"
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.engine.open)
        self.engine.add_batch_observer(observe_batch)
        await self._publisher.start()

    async def close(self) -> None:
        await self._publisher.close()
        await asyncio.to_thread(self.engine.close)

    async def handle(self, req: spb.StoreRequest) -> spb.StoreResponse:
        return await self.engine.handle(req)
