"""Caches that the single writer keeps exact.

The writer is the only thing that changes data, so after each commit it writes the new state of
every touched item into the cache (a tombstone for a delete) and bumps `epoch`. A reader that
loaded rows from DuckDB may only fill the cache if no commit happened since it started reading
(same epoch): otherwise its snapshot may be older than what the writer already put there.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from service.pb import duckcast_pb2 as pb

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

TOMBSTONE = None  # cached "known not to exist"


class EpochCache(Generic[K, V]):
    """A bounded FIFO map guarded by a commit epoch (see module docstring)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._data: dict[K, V | None] = {}
        self._lock = threading.Lock()
        self.epoch = 0

    def lookup(self, key: K) -> tuple[bool, V | None]:
        try:
            return True, self._data[key]
        except KeyError:
            return False, None

    def fill(self, epoch: int, entries: Iterable[tuple[K, V | None]]) -> None:
        """A reader's fill: dropped if a commit happened since `epoch` was read."""
        with self._lock:
            if epoch != self.epoch:
                return
            for key, value in entries:
                self._put(key, value)

    def commit(self, entries: Iterable[tuple[K, V | None]], *, clear: bool = False) -> None:
        """The writer's update after a commit: always wins."""
        with self._lock:
            self.epoch += 1
            if clear:
                self._data.clear()
            for key, value in entries:
                self._put(key, value)

    def _put(self, key: K, value: V | None) -> None:
        if self._capacity <= 0:
            return
        self._data.pop(key, None)
        self._data[key] = value
        while len(self._data) > self._capacity:
            del self._data[next(iter(self._data))]

    def __len__(self) -> int:
        return len(self._data)


ItemCache = EpochCache[int, pb.Item]
PageKey = tuple[int, int, int | None, str | None, str | None]
PageCache = EpochCache[PageKey, pb.ItemPage]
