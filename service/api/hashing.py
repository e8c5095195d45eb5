"""Password hashing (argon2: ~160 ms of CPU each, 64 MiB of memory) on a small, bounded pool.

`asyncio.to_thread` would run up to min(32, cores + 4) hashes at once on the shared default
executor: a login flood then takes every core and the memory of that many hashes, and plain
reads wait behind it. Here at most `threads` hashes run per worker, on threads with a lower
scheduling priority (Linux: nice +10, inherited by argon2's own threads) so the event loop
wins the CPU; at most `queue` more wait, and beyond that a login is refused at once (503 with
Retry-After) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from service.errors import DuckcastError

T = TypeVar("T")
NICENESS = 10


class HashingBusy(DuckcastError):
    status = 503


def _lower_priority() -> None:
    if sys.platform == "linux":  # per-thread nice is a Linux feature
        with contextlib.suppress(OSError):  # not allowed here: run at normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)


class PasswordHashing:
    def __init__(self, threads: int, queue: int) -> None:
        self._executor = ThreadPoolExecutor(
            threads, thread_name_prefix="duckcast-argon2", initializer=_lower_priority
        )
        self._capacity = threads + queue
        self._in_use = 0

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self._in_use >= self._capacity:
            raise HashingBusy("too many logins in progress: retry shortly")
        self._in_use += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            self._in_use -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
