"""Back-pressure: a subscriber that stops reading is dropped with a distinct reason instead of
being buffered for, and neither the worker's memory nor the other subscribers pay for it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtests.harness import children
from tests.e2e_realtime.clients import (
    Account,
    StalledClient,
    Subscriber,
    all_reach,
    assert_exact,
    http_client,
    list_page,
    signup_all,
    until,
)
from tests.e2e_realtime.conftest import Service

pytestmark = pytest.mark.e2e

# DUCKCAST_STREAM_RING_EVENTS: events each worker keeps; a stalled client whose blocked send
# lies behind them for DUCKCAST_STREAM_STALL_SECONDS is dropped. Small, so a stalled client
# is dropped soon; not smaller, because a worker may hand a subscriber several commits at once
# (see test_write_bursts_do_not_drop_subscribers_that_keep_up).
BUFFER = 100
DESCRIPTION = "d" * 8000  # large events, so that socket buffers fill after a few hundred
BULK = 4  # items per bulk create; with 4 writers a commit holds at most 16 events


async def subscriber_gauge(base: str) -> dict[str, float]:
    """duckcast_subscribers per transport, summed over the workers (multiprocess livesum)."""
    async with http_client(base) as client:
        text = (await client.get("/metrics")).text
    return {
        sample.labels["transport"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "duckcast_subscribers"
        for sample in family.samples
    }


async def gauge_becomes(base: str, want: dict[str, float], within: float = 30) -> dict[str, float]:
    deadline = time.monotonic() + within
    while (gauge := await subscriber_gauge(base)) != want:
        assert time.monotonic() < deadline, f"subscriber gauge {gauge}, expected {want}"
        await asyncio.sleep(0.05)
    return gauge


async def write_large_events(base: str, account: Account, events: int) -> None:
    """`events` creates with 8,000-character descriptions, as bulk creates of BULK items from
    4 concurrent writers."""
    body = {"items": [{"title": "big", "description": DESCRIPTION}] * BULK}
    per_writer = events // BULK // 4
    async with http_client(base, headers=account.headers) as client:

        async def writer() -> None:
            for _ in range(per_writer):
                r = await client.post("/api/items/bulk", json=body)
                assert r.status_code == 201, r.text

        await asyncio.gather(*(writer() for _ in range(4)))


async def test_subscriber_that_stops_reading_is_dropped_not_buffered(
    start_service: Callable[..., Service], request: pytest.FixtureRequest
) -> None:
    """An SSE and a WebSocket subscriber stop reading during a burst of large events: each is
    dropped once its blocked send lies behind the ring of BUFFER events (the subscriber gauge
    falls while it still does not read); no worker's RSS grows by more than 25 MB although 2,000
    more events (16 MB of descriptions, more in their wire forms) follow; the other subscribers
    get every event without interruption; and when the stalled clients read again they find a
    gap-free prefix, then the overflow reason (SSE `event: overflow`, WebSocket close 4008), and
    can resume from their last seq."""
    service = start_service(DUCKCAST_STREAM_RING_EVENTS=str(BUFFER))
    base = service.url
    (alice,) = await signup_all(base, "alice")
    start = (await list_page(base, alice))["seq"]
    healthy = [
        Subscriber(base, alice.token, t, since=start, resume=False).start()
        for t in ("sse", "ws-pb", "ws-json") * 4
    ]
    stalled = [StalledClient(service.port, alice.token, t, since=start) for t in ("sse", "ws-pb")]
    for client in stalled:
        request.addfinalizer(client.close)
    await until(lambda: all(s.open for s in healthy), 30, "the healthy subscribers to connect")
    # 4 + 8 healthy, and one stalled of each (registered although it reads nothing)
    gauge = await gauge_becomes(base, {"sse": 5.0, "ws": 9.0})
    rss_before = service.rss_kib()

    written = 0
    while gauge != {"sse": 4.0, "ws": 8.0}:
        assert written < 4000, f"stalled subscribers still connected after {written}: {gauge}"
        await write_large_events(base, alice, 160)
        written += 160
        gauge = await subscriber_gauge(base)
    await write_large_events(base, alice, 2000)
    last = (await list_page(base, alice))["seq"]
    await all_reach(healthy, last, 60)
    rss_after = service.rss_kib()  # every worker has relayed every event by now
    for sub in healthy:
        assert_exact(sub, start + 1, last)
        assert sub.ends == [], (sub.transport, sub.ends)
    growth_mib = {pid: (rss_after[pid] - kib) / 1024 for pid, kib in rss_before.items()}
    assert set(rss_after) == set(rss_before), "no worker was replaced"
    assert max(growth_mib.values()) < 25, f"worker RSS grew (MiB): {growth_mib}"

    for client in stalled:
        events, ending = await client.drain()
        assert ending == ("overflow" if client.transport == "sse" else "ws 4008")
        seqs = [e.seq for e in events]
        assert seqs == list(range(start + 1, start + 1 + len(seqs))), "prefix without gaps"
        assert len(seqs) < last - start - 2000, "dropped before the last 2,000 events"
        resumed = Subscriber(
            base, alice.token, client.transport, since=seqs[-1] if seqs else start, resume=False
        ).start()
        await all_reach([resumed], last, 60)
        assert_exact(resumed, resumed.since + 1, last)
        await resumed.stop()
    await asyncio.gather(*(s.stop() for s in healthy))


async def test_write_bursts_do_not_drop_subscribers_that_keep_up(service: Service) -> None:
    """Subscribers that read promptly are not dropped as "too slow" by a burst of legal writes:
    six concurrent 1,000-item bulk creates (group-committed together, so one commit carries
    more events than a 1,000-event ring) reach every subscriber whole."""
    base = service.url
    alice, bob = await signup_all(base, "alice", "bob")
    start = (await list_page(base, alice))["seq"]
    subs = [
        Subscriber(base, alice.token, t, since=start, resume=False).start()
        for t in ("sse", "ws-pb", "ws-json") * 2
    ]
    await until(lambda: all(s.open for s in subs), 30, "the subscribers to connect")
    async with http_client(base) as client:

        async def bulk(account: Account) -> None:
            body = {"items": [{"title": "burst"}] * 1000}
            r = await client.post("/api/items/bulk", json=body, headers=account.headers)
            assert r.status_code == 201, r.text

        await asyncio.gather(*(bulk(a) for a in (alice, bob) * 3))
    last = (await list_page(base, alice))["seq"]
    assert last == start + 6000
    await until(
        lambda: all((s.last_seq or 0) >= last or s.ends for s in subs),
        60,
        "every subscriber to get the burst or be dropped",
    )
    dropped = [(s.transport, len(s.events), s.ends) for s in subs if s.ends]
    assert dropped == [], f"subscribers dropped by a burst (transport, received, ending): {dropped}"
    for sub in subs:
        assert_exact(sub, start + 1, last)
    await asyncio.gather(*(s.stop() for s in subs))


async def test_stalled_subscriber_does_not_hold_its_worker_on_sigterm(
    service: Service, request: pytest.FixtureRequest
) -> None:
    """A worker whose subscriber stopped reading (its send is blocked on a full socket) still
    ends promptly on SIGTERM, with its lifespan shutdown, instead of waiting for gunicorn's
    graceful timeout (20 s) to kill it: a stalled client is dropped, not waited for."""
    base = service.url
    (alice,) = await signup_all(base, "alice")
    start = (await list_page(base, alice))["seq"]
    stalled = [StalledClient(service.port, alice.token, t, since=start) for t in ("sse", "ws-pb")]
    for client in stalled:
        request.addfinalizer(client.close)
    await until(
        lambda: all(c.local_port in service.worker_of_ports() for c in stalled),
        10,
        "the stalled clients to be accepted",
    )
    await write_large_events(base, alice, 1000)  # ~8 MB: more than the socket buffers hold
    owner = service.worker_of_ports()
    by_worker = {owner[c.local_port]: [] for c in stalled}
    for client in stalled:
        by_worker[owner[client.local_port]].append(client.transport)
    stopped_at = time.monotonic()
    for worker in by_worker:  # all at once: a failure costs one graceful timeout, not two
        os.kill(worker, signal.SIGTERM)
    took: dict[str, float] = {}
    while len(took) < len(by_worker) and time.monotonic() - stopped_at < 30:
        live = set(children(service.master()))
        for worker, transports in by_worker.items():
            if worker not in live and "+".join(transports) not in took:
                took["+".join(transports)] = round(time.monotonic() - stopped_at, 1)
        await asyncio.sleep(0.05)
    assert len(took) == len(by_worker), f"workers still running after 30 s: {by_worker} {took}"
    assert max(took.values()) < 5, f"seconds from SIGTERM to exit, by stalled client: {took}"
    assert "WORKER TIMEOUT" not in service.log_tail(200)
