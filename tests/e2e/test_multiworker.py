"""`duckcast serve --workers N`: the supervisor, its store process and gunicorn, under load and
through a store crash."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from loadtests.harness import children
from tests.conftest import RedisServer, wait_until
from tests.e2e.conftest import (
    Deployment,
    DuckcastProcess,
    bad_log_lines,
    is_gunicorn,
    is_store,
    list_all,
    register_and_login,
)

pytestmark = pytest.mark.e2e

STORE_TIMEOUT = 3.0  # DUCKCAST_STORE_TIMEOUT_SECONDS for the crash test


@dataclass
class Tree:
    store: int
    master: int
    workers: list[int]


def process_tree(api: DuckcastProcess, workers: int) -> Tree:
    """The supervisor's store child and gunicorn master, and the master's workers."""
    kids = children(api.pid)
    stores = [p for p in kids if is_store(p)]
    masters = [p for p in kids if is_gunicorn(p)]
    assert len(stores) == 1 and len(masters) == 1, (kids, api.log_tail())
    wait_until(lambda: len(children(masters[0])) == workers, timeout=30)
    return Tree(stores[0], masters[0], children(masters[0]))


def created_per_worker(data_dir: Path, worker_pids: list[int]) -> dict[int, float]:
    """POST /api/items answered 201, per worker pid, from each worker's own metrics file."""
    counts: dict[int, float] = {}
    for pid in worker_pids:
        path = data_dir / "metrics" / f"counter_{pid}.db"
        counts[pid] = 0.0
        if not path.exists():
            continue
        for family in MultiProcessCollector.merge([str(path)]):
            for sample in family.samples:
                if sample.name == "duckcast_http_requests_total" and sample.labels == {
                    "method": "POST",
                    "route": "/api/items",
                    "status": "201",
                }:
                    counts[pid] += sample.value
    return counts


def scrape(client: httpx.Client, sample_name: str, **labels: str) -> float:
    """The sum of one sample over every series matching `labels` in GET /metrics."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    total = 0.0
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == sample_name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def new_client(
    api: DuckcastProcess, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> httpx.Client:
    """One simulated user: its own client, so its own connection pool."""
    return httpx.Client(base_url=api.url, headers=headers, timeout=timeout)


def sign_up_users(api: DuckcastProcess, names: list[str]) -> dict[str, dict[str, str]]:
    def one(name: str) -> dict[str, str]:
        # Connection: close so registrations land on whichever worker accepts next
        with new_client(api, {"Connection": "close"}) as c:
            return register_and_login(c, name)

    with ThreadPoolExecutor(len(names)) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


@dataclass
class Writes:
    """Every create a test attempted, and what came back."""

    acked: dict[str, dict] = field(default_factory=dict)  # title -> the 201 body
    attempted: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, client: httpx.Client, title: str, reconnect: bool = False) -> httpx.Response:
        with self.lock:
            self.attempted.add(title)
        # Connection: close makes the next request open a new connection, which any worker may
        # accept: keep-alive alone could pin all 50 early connections to one busy acceptor.
        headers = {"Connection": "close"} if reconnect else None
        r = client.post(
            "/api/items", json={"title": title, "priority": len(title) % 101}, headers=headers
        )
        if r.status_code == 201:
            body = r.json()
            assert body["title"] == title
            with self.lock:
                self.acked[title] = body
        return r

    def burst(
        self,
        api: DuckcastProcess,
        tokens: list[dict[str, str]],
        clients: int,
        per_client: int,
        prefix: str,
    ) -> None:
        """`clients` concurrent users, each creating `per_client` items; all must be 201."""
        barrier = threading.Barrier(clients, timeout=60)

        def user(n: int) -> None:
            with new_client(api, tokens[n % len(tokens)]) as c:
                barrier.wait()
                for k in range(per_client):
                    title = f"{prefix}-c{n:02d}-{k:02d}"
                    r = self.create(c, title, reconnect=k % 5 == 4)
                    if r.status_code != 201:
                        with self.lock:
                            self.failures.append(f"{title}: {r.status_code} {r.text}")

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(user, range(clients)))


def assert_all_acked_stored(
    api: DuckcastProcess, headers: dict[str, str], writes: Writes, exact: bool
) -> list[dict]:
    """Every acknowledged create is listed exactly once, as acknowledged; nothing unknown is.

    `exact`: nothing but the acknowledged writes was committed (no write was in doubt)."""
    with new_client(api, headers) as c:
        items, total = list_all(c, headers)
    titles = Counter(item["title"] for item in items)
    duplicates = {t: n for t, n in titles.items() if n > 1}
    assert not duplicates, f"items stored more than once: {duplicates}"
    listed = {item["title"]: item for item in items}
    missing = sorted(set(writes.acked) - set(listed))
    assert not missing, f"{len(missing)} acknowledged creates are gone: {missing[:10]}"
    unknown = sorted(set(listed) - writes.attempted)
    assert not unknown, f"items nobody created: {unknown[:10]}"
    changed = [t for t, body in writes.acked.items() if listed[t] != body]
    assert not changed, f"stored items differ from their 201 answers: {changed[:5]}"
    assert total == len(items)
    if exact:
        assert total == len(writes.acked)
    return items


def test_three_workers_store_every_acknowledged_create_exactly_once(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """50 concurrent users writing through 3 gunicorn workers into one store process: every
    create answered 201 is stored exactly once (`total` equals the acknowledged count), more than
    one worker served the writes, /metrics sums every worker, and no DuckDB lock error or
    traceback appears in any log."""
    data = deployment.data_dir()
    api = deployment.serve(workers=3, data_dir=data, REDIS_URL=redis_server.url)
    tree = process_tree(api, workers=3)
    tokens = list(sign_up_users(api, [f"load{n}" for n in range(10)]).values())

    writes = Writes()
    started = time.monotonic()
    writes.burst(api, tokens, clients=50, per_client=20, prefix="load")
    elapsed = time.monotonic() - started

    assert writes.failures == []
    assert len(writes.acked) == 1000
    ids = [body["id"] for body in writes.acked.values()]
    assert len(set(ids)) == len(ids), "two creates were acknowledged with the same id"
    assert_all_acked_stored(api, tokens[0], writes, exact=True)

    per_worker = created_per_worker(data, tree.workers)
    assert sum(per_worker.values()) == 1000, per_worker
    assert sum(1 for n in per_worker.values() if n > 0) >= 2, (
        f"one worker served every create, so this did not test several workers: {per_worker}"
    )
    with new_client(api) as c:
        summed = scrape(
            c, "duckcast_http_requests_total", method="POST", route="/api/items", status="201"
        )
    assert summed == 1000, "/metrics must sum the counters of every worker"
    assert bad_log_lines(api.logs()) == []
    print(f"1000 creates in {elapsed:.2f}s; per worker: {per_worker}")


def test_store_commit_metrics_are_in_the_metrics_endpoint(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """With `serve --workers N` the supervisor's store writes its metrics into the shared
    PROMETHEUS_MULTIPROC_DIR (it has no --metrics-port of its own), so the commit metrics the
    Grafana dashboard plots (duckcast_commit_batch_size, duckcast_commit_duration_seconds) must
    show the instance's commits in GET /metrics."""
    api = deployment.serve(workers=2, REDIS_URL=redis_server.url)
    headers = sign_up_users(api, ["metrics"])["metrics"]
    with new_client(api, headers) as c:
        for n in range(5):
            assert c.post("/api/items", json={"title": f"m{n}"}).status_code == 201
        # user + 5 items = 6 writes, each in some commit batch
        assert scrape(c, "duckcast_commit_batch_size_sum") >= 6
        assert scrape(c, "duckcast_commit_duration_seconds_count") >= 1


@dataclass
class Outage:
    """Writers and a /readyz poller that run while the store is killed and restarted."""

    api: DuckcastProcess
    headers: dict[str, str]
    writes: Writes
    stop: threading.Event = field(default_factory=threading.Event)
    statuses: Counter[int] = field(default_factory=Counter)
    refused: set[str] = field(default_factory=set)  # answered 503: must not be stored
    ready_codes: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    slowest: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def writer(self, n: int) -> None:
        with new_client(self.api, self.headers, timeout=STORE_TIMEOUT + 10) as c:
            k = 0
            while not self.stop.is_set():
                title = f"outage-w{n}-{k:05d}"
                k += 1
                started = time.monotonic()
                try:
                    r = self.writes.create(c, title)
                except httpx.TransportError as exc:
                    with self.lock:
                        self.problems.append(f"{title}: {exc!r}")
                    continue
                took = time.monotonic() - started
                with self.lock:
                    self.statuses[r.status_code] += 1
                    self.slowest = max(self.slowest, took)
                    if r.status_code == 503:
                        self.refused.add(title)
                        if "retry-after" not in r.headers:
                            self.problems.append(f"{title}: 503 without Retry-After")
                    elif r.status_code not in (201, 504):  # 504: the store died committing it
                        self.problems.append(f"{title}: {r.status_code} {r.text}")
                if r.status_code == 503:
                    time.sleep(0.02)  # a client honouring Retry-After would wait longer

    def poll_ready(self) -> None:
        with new_client(self.api, timeout=STORE_TIMEOUT + 10) as c:
            while not self.stop.is_set():
                try:
                    code = c.get("/readyz").status_code
                except httpx.TransportError as exc:
                    with self.lock:
                        self.problems.append(f"/readyz: {exc!r}")
                    continue
                with self.lock:
                    self.ready_codes.append(code)
                time.sleep(0.01)


def test_store_killed_mid_traffic_is_restarted_and_loses_no_acknowledged_write(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """kill -9 of the store under write traffic: writes during the outage get 201, 503 with
    Retry-After or (for the few the store was committing when it died) 504, never 500, never a
    hang past the store timeout; /readyz says 503 while the store is down and 200 once the
    supervisor has restarted it, the gunicorn workers survive, every write acknowledged
    before, during or after the crash is stored exactly once, and none answered 503 is.
    Once /readyz is 200 every worker serves again: a worker's store client waits for its next
    connection attempt instead of failing fast for the rest of its backoff."""
    data = deployment.data_dir()
    api = deployment.serve(
        workers=3,
        data_dir=data,
        REDIS_URL=redis_server.url,
        DUCKCAST_STORE_TIMEOUT_SECONDS=str(STORE_TIMEOUT),
    )
    tree = process_tree(api, workers=3)
    tokens = list(sign_up_users(api, ["crash1", "crash2", "crash3"]).values())

    writes = Writes()
    writes.burst(api, tokens, clients=10, per_client=10, prefix="before")
    assert writes.failures == []

    outage = Outage(api, tokens[0], writes)
    threads = [threading.Thread(target=outage.writer, args=(n,)) for n in range(6)]
    threads.append(threading.Thread(target=outage.poll_ready))
    for t in threads:
        t.start()
    try:
        wait_until(lambda: outage.statuses[201] >= 30, timeout=30)
        os.kill(tree.store, signal.SIGKILL)
        killed_at = len(outage.ready_codes)

        def restarted() -> int | None:
            stores = [p for p in children(api.pid) if is_store(p) and p != tree.store]
            return stores[0] if stores else None

        wait_until(lambda: restarted() is not None, timeout=30)
        wait_until(lambda: 503 in outage.ready_codes[killed_at:], timeout=15)
        down_at = outage.ready_codes.index(503, killed_at)
        wait_until(lambda: 200 in outage.ready_codes[down_at:], timeout=30)
        acked_when_up = outage.statuses[201]
        # the outage writers keep going until writes flow through the new store again
        wait_until(lambda: outage.statuses[201] >= acked_when_up + 30, timeout=30)
    finally:
        outage.stop.set()
        for t in threads:
            t.join(STORE_TIMEOUT + 15)

    assert outage.problems == []
    assert set(outage.statuses) <= {201, 503, 504}, outage.statuses
    assert outage.slowest < STORE_TIMEOUT + 2, f"a write hung for {outage.slowest:.1f}s"

    writes.burst(api, tokens, clients=10, per_client=10, prefix="after")
    assert writes.failures == []

    # only the store went down: the same gunicorn master and workers served throughout
    assert process_tree(api, workers=3).master == tree.master
    assert children(tree.master) == tree.workers
    wait_until(lambda: "restarting" in api.logs(), timeout=5)
    # acknowledged writes must all be there; a 503 means "not done", even for a kill -9 (only
    # a 504, a write the store announced before it died, may or may not have committed)
    items = assert_all_acked_stored(api, tokens[0], writes, exact=False)
    applied = outage.refused & {item["title"] for item in items}
    assert not applied, f"answered 503 but applied: {sorted(applied)[:5]}"
    assert bad_log_lines(api.logs()) == []
    print(f"outage statuses: {dict(outage.statuses)}; slowest write {outage.slowest:.2f}s")


def settled_pids(logs: str) -> set[int]:
    """The processes that logged service.gcpolicy's line (JSON log lines)."""
    pids = set()
    for line in logs.splitlines():
        if '"gc settled: ' in line:
            pids.add(json.loads(line)["pid"])
    return pids


def test_store_and_every_worker_settle_their_garbage_collector(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """Once started, the store and each gunicorn worker freeze their start-up objects and raise
    the young GC threshold (service.gcpolicy; README, Performance > Writes)."""
    api = deployment.serve(workers=2, REDIS_URL=redis_server.url)
    tree = process_tree(api, workers=2)
    expected = {tree.store, *tree.workers}
    wait_until(lambda: settled_pids(api.logs()) == expected, timeout=10)


def test_embedded_server_settles_its_garbage_collector(deployment: Deployment) -> None:
    """`duckcast serve` with one worker (the store in-process) does the same."""
    api = deployment.serve(workers=1)
    wait_until(lambda: settled_pids(api.logs()) == {api.pid}, timeout=10)
