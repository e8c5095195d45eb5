"""Latency histograms from the node clients, merged and read; medians over rounds.

The clients (loadtests/clients/latency.js) count each commit->receipt latency in a bucket ~1%
wide: bucket 0 holds everything at or below MIN_MS, bucket i >= 1 holds
(MIN_MS * GROWTH**(i-1), MIN_MS * GROWTH**i]. A percentile read here is the geometric middle
of its bucket, so it is within 0.5% of the exact value (capped at the largest sample).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

MIN_MS = 0.01
GROWTH = 1.01
BUCKETS = 2400


def bucket(ms: float) -> int:
    """The bucket of a latency, exactly as latency.js computes it."""
    if not ms > MIN_MS:
        return 0
    return min(BUCKETS - 1, 1 + math.floor(math.log(ms / MIN_MS) / math.log(GROWTH)))


class Latency:
    """Histograms of several processes added together. `missing` samples (deliveries still
    owed when the measurement ended) count as infinitely late."""

    def __init__(self, histograms: Iterable[dict[str, Any]] = (), missing: int = 0) -> None:
        self.counts: dict[int, float] = {}
        self.n = 0
        self.max: float | None = None
        self.missing = missing
        for h in histograms:
            self.add(h)

    def add(self, h: dict[str, Any]) -> None:
        for i, c in h["buckets"].items():
            self.counts[int(i)] = self.counts.get(int(i), 0) + c
        self.n += int(h["n"])
        if h["max"] is not None:
            self.max = h["max"] if self.max is None else max(self.max, h["max"])

    def percentile(self, q: float) -> float:
        total = self.n + self.missing
        if total == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100 * total))
        seen = 0.0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                value = 0.0 if i == 0 else MIN_MS * GROWTH ** (i - 0.5)
                return min(value, self.max) if self.max is not None else value
        return math.inf  # the rank falls among the missing

    def summary(self) -> dict[str, float]:
        return {
            "n": self.n,
            "missing": self.missing,
            "p50": self.percentile(50),
            "p95": self.percentile(95),
            "p99": self.percentile(99),
            "max": math.inf if self.missing else (self.max if self.max is not None else math.nan),
        }


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return float(statistics.median(clean)) if clean else math.nan
