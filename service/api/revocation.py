"""Every worker learns of every revocation within `revocation_poll_ms`.

Logout records the revocation in the store (durable, through the single writer) and adds it
to its own worker's set at once; each worker polls the store for revocations newer than the
last it saw. Requests check the per-worker set (`token.id in app.state.revoked`), never the
store. Why a poll and not the event stream: the poll is one store call per worker per
interval answered from the store's memory (~50 us of worker CPU each, README "Security"),
it needs no Redis, it cannot be lost the way a pub/sub message can, and the store's table is
the one source of truth a restarted worker reloads from (after_rev=0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from service.api.auth import RevokedTokens
from service.errors import DuckcastError
from service.storeclient import StoreClient

logger = logging.getLogger(__name__)

PRUNE_INTERVAL = 60.0  # seconds between sweeps of expired entries


class RevocationSync:
    def __init__(self, store: StoreClient, revoked: RevokedTokens, interval: float) -> None:
        self._store = store
        self._revoked = revoked
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self.last_rev = 0
        self.synced = asyncio.Event()  # set after the first successful poll

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="revocation-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def poll(self) -> None:
        answer = await self._store.revocations_since(self.last_rev)
        for entry in answer.revocations:
            self._revoked.add_id(entry.token_id, entry.expires_at)
        self.last_rev = answer.last_rev
        self.synced.set()

    async def _run(self) -> None:
        pruned_at = time.monotonic()
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except DuckcastError as exc:
                # The store is away: known revocations stay in force, new ones wait for it.
                logger.debug("revocation poll failed: %s", exc)
            except Exception:
                logger.exception("revocation poll failed")
            if time.monotonic() - pruned_at > PRUNE_INTERVAL:
                self._revoked.prune()
                pruned_at = time.monotonic()
            await asyncio.sleep(self._interval)
