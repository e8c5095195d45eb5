"""What a 503 means when the store stalls or stops under load, against real gunicorn workers
and a real store process: 503 = not done. A write answered 503 is never applied later (the
deadline travels with it), a write answered 201 is stored, retries with an Idempotency-Key
create each item exactly once, and a store stopped with SIGTERM answers what it took."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from loadtests.harness import children
from tests.conftest import RedisServer, wait_until
from tests.e2e.conftest import Deployment, DuckcastProcess, is_store, list_all, register_and_login

pytestmark = pytest.mark.e2e

STORE_TIMEOUT = 1.5  # DUCKCAST_STORE_TIMEOUT_SECONDS: a paused store costs callers this long
CLIENTS = 50


@dataclass
class Load:
    """CLIENTS users creating items in a loop; every answer per logical create, in order."""

    api: DuckcastProcess
    headers: dict[str, str]
    prefix: str
    idempotent: bool = False
    answers: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[int] = field(default_factory=Counter)
    gave_up: Counter[int] = field(default_factory=Counter)  # 503s per client
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def user(self, n: int) -> None:
        with httpx.Client(base_url=self.api.url, headers=self.headers, timeout=30) as c:
            k = 0
            while not self.stop.is_set():
                title = f"{self.prefix}-{n:02d}-{k:04d}"
                k += 1
                while True:  # with a key: retry the same create until it is done
                    key = {"Idempotency-Key": title} if self.idempotent else {}
                    r = c.post("/api/items", json={"title": title}, headers=key)
                    with self.lock:
                        self.answers[title].append(r.status_code)
                        self.statuses[r.status_code] += 1
                        if r.status_code == 503:
                            self.gave_up[n] += 1
                    if r.status_code == 201 or not self.idempotent or self.stop.is_set():
                        break

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.user, args=(n,)) for n in range(CLIENTS)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def wait_for(self, status: int, more_than: int) -> None:
        wait_until(lambda: self.statuses[status] > more_than, timeout=60)


def stored(api: DuckcastProcess, headers: dict[str, str], prefix: str) -> Counter[str]:
    with httpx.Client(base_url=api.url, timeout=30) as c:
        items, _ = list_all(c, headers)
    return Counter(i["title"] for i in items if i["title"].startswith(prefix))


def check_not_done_means_not_stored(load: Load) -> None:
    """Every create answered 201 is stored once; every one answered only 503 is not stored.
    (504, "in doubt", may be either, and is counted only to be reported.)"""
    kept = stored(load.api, load.headers, load.prefix)
    assert set(load.statuses) <= {201, 503, 504}, load.statuses
    twice = {t: n for t, n in kept.items() if n > 1}
    assert not twice, f"created more than once: {twice}"
    lost = [t for t, got in load.answers.items() if 201 in got and t not in kept]
    assert not lost, f"answered 201 but not stored: {lost[:5]}"
    applied = [t for t, got in load.answers.items() if set(got) == {503} and t in kept]
    assert not applied, f"answered 503 but applied: {applied[:5]} of {load.statuses[503]}"
    assert not set(kept) - set(load.answers), "stored items nobody created"


@pytest.fixture
def serving(
    deployment: Deployment, redis_server: RedisServer
) -> Iterator[tuple[DuckcastProcess, dict[str, str]]]:
    api = deployment.serve(
        workers=2, REDIS_URL=redis_server.url, DUCKCAST_STORE_TIMEOUT_SECONDS=str(STORE_TIMEOUT)
    )
    with httpx.Client(base_url=api.url, timeout=30) as c:
        headers = register_and_login(c, "outage")
    yield api, headers


def the_store(api: DuckcastProcess, other_than: int = 0) -> int:
    stores = [p for p in children(api.pid) if is_store(p) and p != other_than]
    assert len(stores) == 1, stores
    return stores[0]


def pause_store(api: DuckcastProcess, load: Load) -> None:
    """SIGSTOP the store until every client but one has given up at least once, then SIGCONT.
    (Counted per client, not in 503s: a retrying client answers 503 every STORE_TIMEOUT while
    the store is paused, so CLIENTS 503s can come from half of them.)"""
    store = the_store(api)
    load.wait_for(201, 100)
    with load.lock:
        before, answered_503 = Counter(load.gave_up), load.statuses[503]
    os.kill(store, signal.SIGSTOP)
    try:
        wait_until(
            lambda: (
                load.statuses[503] >= answered_503 + CLIENTS
                and sum(n > before[c] for c, n in list(load.gave_up.items())) >= CLIENTS - 1
            ),
            timeout=60,
        )
    finally:
        os.kill(store, signal.SIGCONT)
    load.wait_for(201, load.statuses[201] + 100)


def test_a_paused_store_answers_503_only_for_writes_it_never_applies(
    serving: tuple[DuckcastProcess, dict[str, str]],
) -> None:
    """SIGSTOP the store while 50 clients create: every 503 is a write that is not in the
    store afterwards (although the store read most of them only after SIGCONT), every 201
    is. Then the same with Idempotency-Key and retries: each logical create exists once."""
    api, headers = serving
    with Load(api, headers, "plain") as plain:
        pause_store(api, plain)
    check_not_done_means_not_stored(plain)
    assert plain.statuses[503] >= CLIENTS

    with Load(api, headers, "keyed", idempotent=True) as keyed:
        pause_store(api, keyed)
    kept = stored(api, headers, "keyed")
    check_not_done_means_not_stored(keyed)
    done = [t for t, got in keyed.answers.items() if 201 in got]
    assert all(kept[t] == 1 for t in done)
    retried = [t for t in done if len(keyed.answers[t]) > 1]
    # (a client whose write the store was committing at SIGSTOP waits for it: no retry)
    assert len(retried) >= CLIENTS // 2, "the pause did not make clients retry"
    print(f"plain: {dict(plain.statuses)}; keyed: {dict(keyed.statuses)}")


def test_a_store_stopped_under_load_answers_every_write_it_committed(
    serving: tuple[DuckcastProcess, dict[str, str]],
) -> None:
    """SIGTERM to the store under load (the supervisor then restarts it): the store stops
    taking requests, commits and answers those it took, then exits. No committed write is
    answered 503, no 201 is lost, and writes flow again through the new store."""
    api, headers = serving
    with Load(api, headers, "drain") as load:
        load.wait_for(201, 100)
        old = the_store(api)
        os.kill(old, signal.SIGTERM)
        wait_until(
            lambda: len([p for p in children(api.pid) if is_store(p) and p != old]) == 1, timeout=60
        )
        load.wait_for(201, load.statuses[201] + 100)
    check_not_done_means_not_stored(load)
    assert "store stopped" in api.logs()
    print(f"drain: {dict(load.statuses)}")
