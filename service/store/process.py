"""`duckcast store`: the store as its own process (the only one that opens the DuckDB file)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from service import gcpolicy, hoptrace
from service.config import Settings
from service.keys import Keys
from service.metrics import observe_batch
from service.store.engine import StoreEngine
from service.store.server import StoreServer
from service.store.uploads import UploadLimits

logger = logging.getLogger(__name__)

ORPHAN_CHECK_INTERVAL = 1.0  # seconds


def build_engine(settings: Settings) -> StoreEngine:
    return StoreEngine(
        settings.database_path,
        read_threads=settings.read_threads,
        duckdb_threads=settings.duckdb_threads,
        item_cache_bytes=settings.item_cache_bytes,
        miss_cache_entries=settings.miss_cache_entries,
        page_cache_bytes=settings.page_cache_bytes,
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
    if hoptrace.HOPS is not None:
        engine.add_batch_observer(hoptrace.note_batch)
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
    gcpolicy.settle(settings.gc_threshold)  # what exists now (the engine, its caches) stays
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphaned = None
    if os.environ.get("DUCKCAST_SUPERVISED"):
        orphaned = asyncio.create_task(_stop_when_orphaned(os.getppid(), stop))
    print(f"duckcast store ready on {listen}", flush=True)
    await stop.wait()
    if orphaned is not None:
        orphaned.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await orphaned
    # shutdown: refuse new requests, answer (commit) those taken, then close the file
    await server.close()
    await asyncio.to_thread(engine.close)
    if publisher is not None:
        await publisher.close()
        await backplane.close()
    logger.info("store stopped")


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """Under `duckcast serve` the store has a process group of its own, so a supervisor that
    is killed outright cannot take it along: it notices being re-parented and stops itself."""
    while True:
        await asyncio.sleep(ORPHAN_CHECK_INTERVAL)
        if os.getppid() != parent:
            break
    logger.warning("the supervisor is gone: stopping")
    stop.set()
