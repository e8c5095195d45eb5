"""Embedded mode: the store runs inside the API process, called without a socket."""

from __future__ import annotations

from typing import Protocol

from service.pb import store_pb2 as spb
from service.storeclient.base import StoreClient


class LocalStore(Protocol):
    """What the in-process client needs of the store (service.store.embedded.EmbeddedStore;
    tests pass an opened StoreEngine and never start it)."""

    async def handle(self, req: spb.StoreRequest) -> spb.StoreResponse: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class InProcessStoreClient(StoreClient):
    def __init__(self, store: LocalStore) -> None:
        self.local = store

    async def start(self) -> None:
        await self.local.start()

    async def close(self) -> None:
        await self.local.close()

    async def call(self, req: spb.StoreRequest) -> spb.StoreResponse:
        return await self.local.handle(req)
