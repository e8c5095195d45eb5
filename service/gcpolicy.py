"""Python's cyclic garbage collector, tuned for a long-running server process.

With Python's defaults (a young collection after 700 net allocations of tracked objects) a
worker under concurrent creates collected about once per 35 requests: 32 requests in flight
hold more than 700 objects between them, so the count crossed the threshold with nothing to
collect. Every few hundred of those, a full collection walked every object the process holds,
~100,000, most of them made at start-up (modules, routes, schemas) and alive until exit.
Together ~13 us of CPU per create (README, Performance > Writes).

`settle()`, once a server process has loaded what it keeps for its lifetime: one collection,
then the survivors moved out of the collector's sight (`gc.freeze`: still freed by reference
counting, never scanned again), and a young threshold that the objects of the requests in
flight do not reach. What is still collected is what accumulates: garbage cycles, and objects
that outlive many requests (the ring's events, cache entries).
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)


def settle(young_threshold: int) -> None:
    """Freeze what exists now and raise the young threshold; 0 leaves Python's defaults."""
    if young_threshold <= 0:
        return
    gc.collect()  # a frozen garbage cycle would never be collected
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
    frozen = gc.get_freeze_count()
    logger.info("gc settled: %d objects frozen, young threshold %d", frozen, young_threshold)
