"""The store's outbox publisher: committed events -> backplane, one message per batch, in order.

The event log is the outbox. After each commit the writer wakes this task; it publishes
everything after `published` (what it last published successfully) and moves `published` on
only after the backplane took the message. While Redis is down the events wait in the log and
go out, in order, when it is back. `published` is also kept in a small file so a restarted
store resumes where it stopped (re-publishing a little is harmless: subscribers drop seqs they
have already delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from service.backplane import Backplane
from service.metrics import EVENTS_PUBLISHED, observe_outbox
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.store.engine import StoreEngine

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_MESSAGE = 1000
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
SAVE_INTERVAL = 1.0  # seconds (a file write and rename cost ~ms here: see _advance)


class OutboxPublisher:
    def __init__(self, engine: StoreEngine, backplane: Backplane, state_file: Path) -> None:
        self._engine = engine
        self._backplane = backplane
        self._state_file = state_file
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self._saved_at = 0.0
        self._save_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        last = self._engine.state.last_seq
        try:
            saved = int(self._state_file.read_text())
        except (OSError, ValueError):
            saved = last  # first start: what is already in the log predates any subscriber
        self.published = min(saved, last)
        # Saved now, so a store that dies before its first publish resumes from here, not
        # from whatever the log holds by then.
        self._save()
        loop = asyncio.get_running_loop()

        def wake(events: object) -> None:  # runs on the writer thread
            loop.call_soon_threadsafe(self._wake.set)

        self._engine.add_listener(wake)
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="outbox-publisher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._save()

    async def _run(self) -> None:
        backoff = 0.0
        failing_since: float | None = None
        while True:
            await self._wake.wait()
            self._wake.clear()
            observe_outbox(self._engine.state.last_seq, self.published)
            while self.published < self._engine.state.last_seq:
                try:
                    if not await self._publish_next():
                        # The writer sets the store's seq a moment before the events are
                        # readable, and wakes us only after: asking again now would return at
                        # once, again and again, without ever yielding the loop (a spin that
                        # also holds the GIL the writer needs). Wait for that wake-up.
                        break
                    backoff = 0.0
                    if failing_since is not None:
                        down = time.monotonic() - failing_since
                        logger.info("publishing events restored after %.1fs", down)
                        failing_since = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failing_since = failing_since or time.monotonic()
                    backoff = min(max(backoff * 2, BACKOFF_MIN), BACKOFF_MAX)
                    logger.warning("publishing events failed (%s); retry in %.2fs", exc, backoff)
                    await asyncio.sleep(backoff)
                observe_outbox(self._engine.state.last_seq, self.published)

    async def _publish_next(self) -> bool:
        """Publish the next events after `published`; False if none could be read yet."""
        batch = await self._engine.events_since(self.published, MAX_EVENTS_PER_MESSAGE)
        if batch.reset:
            # Unpublished events were trimmed (the backplane was down for longer than the
            # retention): subscribers will detect the gap and get a reset from the store.
            logger.error("events after %d were trimmed before publishing", self.published)
            self._advance(batch.last_seq)
            return True
        if not batch.events:
            return False
        batch.last_seq = batch.events[-1].seq  # it is ours: sent as is, not copied again
        await self._backplane.publish(batch.SerializeToString())
        EVENTS_PUBLISHED.inc(len(batch.events))
        self._advance(batch.events[-1].seq)
        return True

    def _advance(self, seq: int) -> None:
        self.published = seq
        # Saving is a file write on the store's loop: at most one per SAVE_INTERVAL. After a
        # crash the store re-publishes what it had not saved yet, and subscribers drop it by seq.
        if self._save_timer is None:
            delay = max(0.0, SAVE_INTERVAL - (time.monotonic() - self._saved_at))
            self._save_timer = asyncio.get_running_loop().call_later(delay, self._save)

    def _save(self) -> None:
        if self._save_timer is not None:
            self._save_timer.cancel()
            self._save_timer = None
        self._saved_at = time.monotonic()
        tmp = self._state_file.with_suffix(".tmp")
        try:
            tmp.write_text(str(self.published))
            os.replace(tmp, self._state_file)
        except OSError as exc:
            logger.warning("could not save published seq: %s", exc)


def decode_batch(payload: bytes) -> list[pb.DomainEvent]:
    return list(spb.EventBatch.FromString(payload).events)
