"""Caches that the single writer keeps exact, bounded in bytes.

The writer is the only thing that changes data, so after each commit it writes the new state of
every touched item into the cache (a "not found" for a delete) and bumps `epoch`. A reader that
loaded rows from DuckDB may only fill the cache if no commit happened since it started reading
(same epoch): otherwise its snapshot may be older than what the writer already put there.

Entries are evicted least recently used first, by an estimate of the memory they hold
(measured for upb messages: ~1.1 KB per Item plus its serialized size; see `item_cost`). Keys
known not to exist live in a separate, small, count-bounded LRU, so scanning absent ids can
evict only other absent ids, never a cached item.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from service.pb import duckcast_pb2 as pb

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Measured RSS per cached message (service/store/cache.py docstring): a pb.Item costs ~1.1 KB
# of wrapper and arena before its fields; a page's items share one arena (~0.5 KB each).
ITEM_OVERHEAD = 1200
PAGE_OVERHEAD = 1000
PAGE_ITEM_OVERHEAD = 500


def item_cost(item: pb.Item) -> int:
    return ITEM_OVERHEAD + item.ByteSize() * 5 // 4


def page_cost(page: pb.ItemPage) -> int:
    return PAGE_OVERHEAD + PAGE_ITEM_OVERHEAD * len(page.items) + page.ByteSize() * 5 // 4


class EpochCache(Generic[K, V]):
    """An LRU map bounded by `budget` bytes (as estimated by `cost`), plus up to `misses` keys
    known to be absent, guarded by a commit epoch (see module docstring)."""

    def __init__(self, budget: int, cost: Callable[[V], int], misses: int = 0) -> None:
        self.budget = budget
        self._cost = cost
        self._miss_capacity = misses
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._misses: OrderedDict[K, None] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.epoch = 0

    def lookup(self, key: K) -> tuple[bool, V | None]:
        """(True, value), (True, None) for a key known to be absent, (False, None) if unknown."""
        entry = self._data.get(key)
        if entry is not None:
            # (evicted by the writer thread in between: the entry is still a valid answer)
            with contextlib.suppress(KeyError):
                self._data.move_to_end(key)
            return True, entry[0]
        if key in self._misses:
            return True, None
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
                self._misses.clear()
                self.bytes = 0
            for key, value in entries:
                self._put(key, value)

    def _put(self, key: K, value: V | None) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if value is None:
            if self._miss_capacity > 0:
                self._misses[key] = None
                self._misses.move_to_end(key)
                if len(self._misses) > self._miss_capacity:
                    self._misses.popitem(last=False)
            return
        self._misses.pop(key, None)
        cost = self._cost(value)
        if cost > self.budget:
            return
        self._data[key] = (value, cost)
        self.bytes += cost
        while self.bytes > self.budget:
            _, (_, evicted) = self._data.popitem(last=False)
            self.bytes -= evicted

    def __len__(self) -> int:
        return len(self._data)

    @property
    def miss_count(self) -> int:
        return len(self._misses)


ItemCache = EpochCache[int, pb.Item]
PageKey = tuple[int, int, int | None, str | None, str | None]
PageCache = EpochCache[PageKey, pb.ItemPage]


def item_cache(budget: int, misses: int) -> ItemCache:
    return EpochCache(budget, item_cost, misses)


def page_cache(budget: int) -> PageCache:
    return EpochCache(budget, page_cost)
