"""`duckcast store`: the store as its own process (the only one that opens the DuckDB file)."""

from __future__ import annotations

import asyncio
import logging
import signal

from service.config import Settings
from service.keys import Keys
from service.metrics import observe_batch
from service.store.engine import StoreEngine
from service.store.server import StoreServer
from service.store.uploads import UploadLimits

logger = logging.getLogger(__name__)


def build_engine(settings: Settings) -> StoreEngine:
    return StoreEngine(
        settings.database_path,
        read_threads=settings.read_threads,
        item_cache_size=settings.item_cache_size,
        commit_window=settings.commit_window_ms / 1000,
        max_batch=settings.max_batch,
        event_retention=settings.event_retention,
        upload_limits=UploadLimits(settings.upload_quota_bytes, settings.upload_rate_per_minute),
    )


async def run_store(
    settings: Settings, keys: Keys, listen: str, metrics_port: int | None = None
) -> None:
    engine = build_engine(settings)
    await asyncio.to_thread(engine.open)
    engine.add_batch_observer(observe_batch)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    publisher = None
    if settings.redis_url:
        from service.backplane import backplane_from_url
        from service.store.outbox import OutboxPublisher

        backplane = backplane_from_url(settings.redis_url, keys.backplane)
        publisher = OutboxPublisher(engine, backplane, settings.data_dir / "published_seq")
        await publisher.start()
    else:
        logger.warning("REDIS_URL is not set: change events are not published to workers")
    server = StoreServer(engine, listen, key=keys.store)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"duckcast store ready on {listen}", flush=True)
    await stop.wait()
    # shutdown: stop answering, then let queued writes commit in order and close the file
    await server.close()
    await asyncio.to_thread(engine.close)
    if publisher is not None:
        await publisher.close()
        await backplane.close()
    logger.info("store stopped")
