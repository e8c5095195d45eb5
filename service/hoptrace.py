"""Diagnostic, off unless DUCKCAST_FANOUT_TRACE names a directory (`loadtests.fanout --trace`
sets it): where a write's time goes, hop by hop, across a worker and the store process.

Each process appends rows of `time.monotonic()` stamps (CLOCK_MONOTONIC, one clock for every
process of the machine, so stamps of the worker and the store compare) to
`<dir>/hops-<pid>.jsonl`, once a second; loadtests/fanout/hops.py joins a worker's row for a
POST with the store's row for the request that carried it (by the worker's pid and the
request id) and with the store's commit batch, and sums up each hop. Rows:

- `post` (a worker, one per POST /api/items that reached the store client): `rx` the worker's
  HTTP protocol got the request's bytes; `app` the app began handling it; `call` it reached
  the store client; `sent` the frame carrying it was written to the store's socket; `read`
  the worker's read loop parsed the store's answer; `resolved` the create's own future was
  set; `resumed` the request's handler ran again; `resp` the response's head was sent, `end`
  its last part. `pid`, `rid`: the store request that carried it (with others, when creates
  coalesced into a CreateMany).
- `req` (the store, one per write request): `pid` of the worker (SO_PEERCRED), `rid`;
  `read` the store's loop parsed the frame; `announce` the Committing notice was queued (on
  the loop, while the writer waits for it before COMMIT); `handled` the writer's answer
  reached the request's task; `flushed` the answer was written to the worker's socket.
- `batch` (the store's writer thread, one per group commit): `start` .. `end` of the
  transaction (announcement wait, apply, COMMIT), `n` writes.

Cost when off: one `is None` test per request at each stamp.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from contextvars import ContextVar
from typing import Any

TRACED = ("create_items", "create_many")  # the store requests followed: the creates


class HopLog:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._rows: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None

    def note(self, row: dict[str, Any]) -> None:
        """From any thread: kept until the next flush (list.append is atomic)."""
        self._rows.append(row)

    def add(self, row: dict[str, Any]) -> None:
        """On the event loop: kept, and written within a second."""
        self._rows.append(row)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(1.0, self.flush)

    def flush(self) -> None:
        self._timer = None
        rows, self._rows = self._rows, []
        if rows:
            # the pid now, not at import: gunicorn may import before it forks the workers
            path = os.path.join(self.directory, f"hops-{os.getpid()}.jsonl")
            with open(path, "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))


_directory = os.environ.get("DUCKCAST_FANOUT_TRACE")
HOPS: HopLog | None = HopLog(_directory) if _directory else None
# The worker's request being handled (set only while tracing): its `post` row, filled in as it
# goes; and when the HTTP protocol got the bytes that started it (tasks inherit it).
POST: ContextVar[dict[str, Any] | None] = ContextVar("duckcast_hop_post", default=None)
RX: ContextVar[float] = ContextVar("duckcast_hop_rx", default=0.0)


def note_batch(size: int, seconds: float) -> None:
    """The store's batch observer (on the writer thread, right after the commit)."""
    if HOPS is not None:
        end = time.monotonic()
        HOPS.note({"kind": "batch", "start": end - seconds, "end": end, "n": size})
