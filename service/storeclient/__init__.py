"""What a worker imports to talk to the store; `connect_store` picks the implementation by
the store URL (none: the store embedded in this process; unix:/tcp: the socket client).
The store's own code (DuckDB, Arrow) is imported only in embedded mode."""

from __future__ import annotations

from service.backplane import Backplane
from service.config import Settings
from service.storeclient.base import StoreClient

__all__ = ["StoreClient", "connect_store"]


def connect_store(settings: Settings, backplane: Backplane, store_key: bytes) -> StoreClient:
    """`store_key`: service.keys.Keys.store, proven to a store process when connecting."""
    client: StoreClient
    if settings.store_url is None:
        from service.store.embedded import EmbeddedStore
        from service.storeclient.inprocess import InProcessStoreClient

        client = InProcessStoreClient(EmbeddedStore(settings, backplane))
    else:
        from service.storeclient.socket import SocketStoreClient

        client = SocketStoreClient(
            settings.store_url, key=store_key, max_in_flight=settings.store_max_in_flight
        )
    client.timeout = settings.store_timeout_seconds
    return client
