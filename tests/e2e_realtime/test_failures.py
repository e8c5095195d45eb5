"""Change events through failures: Redis killed and restarted mid-burst, a gunicorn worker
terminated or killed under its subscribers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import pytest

from tests.conftest import RedisServer
from tests.e2e_realtime.clients import (
    Subscriber,
    WriteLog,
    all_reach,
    assert_exact,
    http_client,
    list_page,
    signup_all,
    until,
    write_mix,
)
from tests.e2e_realtime.conftest import Service

pytestmark = pytest.mark.e2e


def subscribers(base: str, token: str, start: int, n_sse: int, n_ws: int) -> list[Subscriber]:
    """SSE and WebSocket (protobuf and JSON, alternately) subscribers that resume after their
    stream ends, from the last seq they received."""
    subs = [Subscriber(base, token, "sse", since=start) for _ in range(n_sse)]
    subs += [
        Subscriber(base, token, "ws-pb" if i % 2 else "ws-json", since=start) for i in range(n_ws)
    ]
    return [s.start() for s in subs]


async def all_ready(base: str, probes: int = 12) -> bool:
    """/readyz answers 200 on `probes` fresh connections in a row (so, in all likelihood, on
    every worker)."""
    async with http_client(base) as client:
        for _ in range(probes):
            if (await client.get("/readyz")).status_code != 200:
                return False
    return True


async def test_redis_restart_mid_burst_loses_no_event(
    service: Service, redis_server: RedisServer
) -> None:
    """Redis is killed and restarted during a write burst: writes keep being acknowledged while
    it is down (the store commits regardless), and every subscriber still gets every event once,
    in order (the outbox waits for Redis, the workers repair gaps from the store's log)."""
    base = service.url
    accounts = await signup_all(base, "alice", "bob", "carol")
    start = (await list_page(base, accounts[0]))["seq"]
    subs = subscribers(base, accounts[0].token, start, n_sse=8, n_ws=8)
    await until(lambda: all(s.open for s in subs), 30, "every subscriber to connect")

    log = WriteLog()
    writes = asyncio.create_task(
        write_mix(base, accounts, total=700, concurrency=6, log=log, seed=2)
    )
    await until(lambda: log.total >= 100, 60, "the burst to get going")
    await asyncio.to_thread(redis_server.stop, kill=True)
    down_at, acked_before = time.monotonic(), log.total
    await until(lambda: log.total >= acked_before + 100, 60, "writes acknowledged, Redis down")
    await asyncio.to_thread(redis_server.start)
    up_at = time.monotonic()
    await writes

    assert log.failures == [], log.failures[:5]
    while_down = [a for a in log.answered_at if down_at < a[0] < up_at]
    assert len(while_down) >= 100 and all(status < 300 for _, _, status in while_down)
    last = (await list_page(base, accounts[0]))["seq"]
    assert last == start + 700
    await all_reach(subs, last, 60)
    for sub in subs:
        assert_exact(sub, start + 1, last)
    # The workers' subscriptions are live again, not just their repair polling.
    deadline = time.monotonic() + 30
    while not await all_ready(base):
        assert time.monotonic() < deadline, "workers did not resubscribe to the restarted Redis"
        await asyncio.sleep(0.1)
    await asyncio.gather(*(s.stop() for s in subs))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_clients_of_a_killed_worker_resume_and_miss_nothing(
    service: Service, signum: signal.Signals
) -> None:
    """A worker is terminated (SIGTERM) or killed (SIGKILL) while writes go on. Its SSE and
    WebSocket clients see their stream end (on SIGTERM promptly, WebSocket code 1012), resume
    from their last seq on another worker, and end with every event once, in order; clients
    of the other workers are not disturbed; gunicorn starts a replacement worker."""
    base = service.url
    accounts = await signup_all(base, "alice", "bob")
    start = (await list_page(base, accounts[0]))["seq"]
    subs = subscribers(base, accounts[0].token, start, n_sse=12, n_ws=12)
    await until(lambda: all(s.open for s in subs), 30, "every subscriber to connect")
    owner = service.worker_of_ports()
    by_worker = Counter(owner[s.local_port] for s in subs)
    victim = by_worker.most_common(1)[0][0]
    victims = [s for s in subs if owner[s.local_port] == victim]
    bystanders = [s for s in subs if owner[s.local_port] != victim]

    log = WriteLog()
    writes = asyncio.create_task(
        write_mix(base, accounts, total=600, concurrency=6, log=log, seed=3)
    )
    await until(lambda: log.total >= 100, 60, "the burst to get going")
    killed_at = time.monotonic()
    os.kill(victim, signum)
    await until(lambda: all(s.ends for s in victims), 15, "the victim's streams to end")
    ended_after = max(s.ended_at[0] for s in victims) - killed_at
    if signum == signal.SIGTERM:
        # Promptly: well inside gunicorn's 20 s graceful timeout, not because of it.
        assert ended_after < 5, f"streams ended {ended_after:.1f}s after SIGTERM"
        for sub in victims:
            want = "eof" if sub.transport == "sse" else "ws 1012"
            assert sub.ends[0] == want, (sub.transport, sub.ends)
    await until(
        lambda: len(service.workers()) == 3 and victim not in service.workers(),
        30,
        "gunicorn to replace the worker",
    )
    await writes

    acked = sum(n for (op, status), n in log.statuses.items() if op != "lost")
    lost = log.statuses.total() - acked
    assert all(op == "lost" for (op, status) in log.statuses if status >= 300 or not status)
    last = (await list_page(base, accounts[0]))["seq"]
    if signum == signal.SIGTERM:
        # A terminated worker finishes every request it started; one whose connection it had
        # accepted but not yet read is closed unanswered (uvicorn's shutdown) and never ran.
        assert last == start + acked, f"{lost} unanswered writes: {log.failures}"
    else:
        # Requests in flight on the killed worker get no answer; they may have committed.
        assert start + acked <= last <= start + acked + lost
    await all_reach(subs, last, 60)
    for sub in subs:
        assert_exact(sub, start + 1, last)
    for sub in victims:
        assert sub.connections >= 2, (sub.transport, sub.ends)
    for sub in bystanders:
        assert sub.ends == [] and sub.connections == 1, (sub.transport, sub.ends)
    await asyncio.gather(*(s.stop() for s in subs))
