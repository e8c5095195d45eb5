"""`python -m loadtests.relay_cost`: what one worker's relay costs per committed event.

Every worker receives every event, subscribers or not, so with N workers a create pays this N
times. The relay (the backplane's payload parsed, the read cache's items and cached first page
kept exact, the ring appended) takes `--batches` payloads of `--events` created items each, as
the store publishes them, with a cached `limit=20` first page as the bench's list scenario
leaves one. Prints the CPU per event (process time, median of `--rounds`). For a figure the
machine's load does not move, run it under callgrind twice (e.g. `--batches 400` and `800`)
and again with `--build-only` (the payloads alone), and divide the difference of the
differences by the extra events. `--settle` first settles the collector as a server does
(service.gcpolicy), when the checkout has it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time

from service.backplane.memory import MemoryBackplane
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.realtime.readcache import ReadCache
from service.realtime.relay import EventRelay
from service.realtime.ring import Ring
from service.wire import set_us

EPOCH_US = 1_700_000_000_000_000


def payload(first_seq: int, events: int) -> bytes:
    batch = spb.EventBatch()
    for seq in range(first_seq, first_seq + events):
        event = batch.events.add(type=pb.CREATED, seq=seq)
        item = event.item
        item.id, item.title, item.status, item.owner_id, item.version = (
            seq,
            "bench item",
            "active",
            1,
            1,
        )
        set_us(item.created_at, EPOCH_US + seq)
        set_us(item.updated_at, EPOCH_US + seq)
        event.stats.total = event.stats.active = seq
    batch.last_seq = first_seq + events - 1
    return batch.SerializeToString()


async def measure(args: argparse.Namespace) -> list[float]:
    ring, cache = Ring(), ReadCache(64 * 1024 * 1024)
    relay = EventRelay(MemoryBackplane(), None, ring)  # type: ignore[arg-type]  # no store call
    relay.listen(cache.on_events, cache.on_reset)
    ring.start(0)
    cache.on_reset(0)
    await cache.first_page(20, None, empty_page)
    n = args.events
    payloads = [payload(1 + k * n, n) for k in range(args.batches * args.rounds)]
    if args.build_only:
        return []
    if args.settle:
        from service import gcpolicy

        gcpolicy.settle(10_000)
    per_event = []
    for r in range(args.rounds):
        started = time.process_time()
        for body in payloads[r * args.batches : (r + 1) * args.batches]:
            await relay._receive(body)  # the step the relay's task takes per backplane message
        per_event.append((time.process_time() - started) / (args.batches * n) * 1e6)
    page = await cache.first_page(20, None, empty_page)
    newest = args.batches * args.rounds * n
    assert [i.id for i in page.items] == list(range(newest, newest - 20, -1)), "page not exact"
    return per_event


async def empty_page() -> pb.ItemPage:
    return pb.ItemPage(total=0, page=1, pages=0, limit=20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.relay_cost")
    parser.add_argument("--batches", type=int, default=500, help="payloads per round")
    parser.add_argument("--events", type=int, default=32, help="created events per payload")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", action="store_true", help="settle the collector first")
    parser.add_argument("--build-only", action="store_true", help="only build the payloads")
    args = parser.parse_args(argv)
    gc.collect()
    found = asyncio.run(measure(args))
    if found:
        print(
            f"relay: CPU per event min {min(found):.2f} us, median"
            f" {statistics.median(found):.2f} us ({args.events} events per payload)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
