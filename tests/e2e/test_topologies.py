"""The ways Duckcast is started: the README's embedded `serve`, the compose topology as plain
processes, the refusal to run several workers without Redis, and a clean supervisor shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import httpx
import pytest

from loadtests.harness import alive, children, cmdline, descendants
from tests.conftest import RedisServer, free_port, wait_until
from tests.e2e.conftest import (
    DUCKCAST,
    Deployment,
    bad_log_lines,
    is_gunicorn,
    is_store,
    register_and_login,
)

pytestmark = pytest.mark.e2e

GRACEFUL_TIMEOUT = 20  # service/gunicorn_conf.py graceful_timeout


def test_embedded_serve_works_stops_cleanly_and_keeps_data(deployment: Deployment) -> None:
    """The README's first command, `duckcast serve` with no Redis and no store URL, is one
    process that answers /readyz and the users/items API; SIGTERM makes it exit 0 within a few
    seconds, and started again on the same data dir it still has the user and the item."""
    data = deployment.data_dir()
    first = deployment.serve("embedded-1", data_dir=data)
    assert children(first.pid) == [], "embedded mode must not start a store or gunicorn"
    with httpx.Client(base_url=first.url, timeout=10) as c:
        headers = register_and_login(c, "readme")
        r = c.post(
            "/api/items", json={"title": "survives a restart", "priority": 7}, headers=headers
        )
        assert r.status_code == 201, r.text
        item = r.json()
        r = c.get(f"/api/items/{item['id']}", headers=headers)
        assert r.status_code == 200
        assert r.json() == item

    started = time.monotonic()
    first.signal(signal.SIGTERM)
    rc = first.wait(timeout=10)
    assert time.monotonic() - started < 5, "SIGTERM took more than a few seconds"

    second = deployment.serve("embedded-2", data_dir=data)
    with httpx.Client(base_url=second.url, timeout=10) as c:
        r = c.get(f"/api/items/{item['id']}", headers=headers)  # same secret: token still valid
        assert r.status_code == 200, r.text
        assert r.json() == item
        r = c.post("/api/login", json={"username": "readme", "password": "correct horse"})
        assert r.status_code == 200, "the user did not survive the restart"
        r = c.get("/api/items", headers=headers)
        assert r.json()["total"] == 1
    assert bad_log_lines(first.logs() + second.logs()) == []
    assert rc == 0, f"exit status {rc} after SIGTERM (-15: killed by the signal)"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_several_workers_without_redis_exit_at_once_naming_redis_url(
    deployment: Deployment, how: str
) -> None:
    """`serve --workers 2` (or DUCKCAST_WORKERS=2) without REDIS_URL refuses to start: it exits
    non-zero quickly with a message naming REDIS_URL, before starting a store or gunicorn."""
    data = deployment.data_dir()
    args = ["serve", "--port", str(free_port()), "--data-dir", str(data)]
    env = deployment.env()
    if how == "flag":
        args += ["--workers", "2"]
    else:
        env["DUCKCAST_WORKERS"] = "2"
    started = time.monotonic()
    done = subprocess.run(
        [*DUCKCAST, *args],
        env=env,
        capture_output=True,
        timeout=30,
        cwd=deployment.logdir,
        start_new_session=True,
    )
    assert done.returncode != 0
    assert time.monotonic() - started < 10
    assert b"REDIS_URL" in done.stderr, done.stderr
    assert b"Traceback" not in done.stderr
    assert not (data / "store.sock").exists(), "a store was started anyway"
    assert not (data / "duckcast.duckdb").exists()


def test_compose_topology_as_processes(deployment: Deployment, redis_server: RedisServer) -> None:
    """Compose's `store` and `api` as plain processes: a standalone `duckcast store --listen
    tcp:…` serves a `serve --workers 2` that has DUCKCAST_STORE_URL (which then starts no store of
    its own and opens no DuckDB file); create/read work through it; stopping the api leaves the
    store running and serving a new api; the store then stops cleanly on SIGTERM."""
    store_port = free_port()
    store_data, api_data = deployment.data_dir(), deployment.data_dir()
    store = deployment.command(
        "store",
        ["store", "--listen", f"tcp:127.0.0.1:{store_port}", "--data-dir", str(store_data)],
        deployment.env(REDIS_URL=redis_server.url),
    )
    store.wait_listening("127.0.0.1", store_port)
    api_env = {"DUCKCAST_STORE_URL": f"tcp:127.0.0.1:{store_port}", "REDIS_URL": redis_server.url}

    api = deployment.serve("api-1", workers=2, data_dir=api_data, **api_env)
    tree = descendants(api.pid)
    assert not any(is_store(p) for p in tree), "the api started a store of its own"
    assert sum(1 for p in tree if is_gunicorn(p)) == 3  # master + 2 workers
    with httpx.Client(base_url=api.url, timeout=10) as c:
        headers = register_and_login(c, "compose")
        r = c.post("/api/items", json={"title": "via tcp"}, headers=headers)
        assert r.status_code == 201, r.text
        item = r.json()
        assert c.get(f"/api/items/{item['id']}", headers=headers).json() == item
    assert not (api_data / "duckcast.duckdb").exists(), "only the store may open DuckDB"
    assert (store_data / "duckcast.duckdb").exists()

    api.signal(signal.SIGTERM)
    assert api.wait(timeout=GRACEFUL_TIMEOUT + 5) == 0, api.log_tail()
    assert store.running(), "stopping the api stopped the store"
    assert not any(alive(p) for p in tree)

    again = deployment.serve("api-2", workers=2, data_dir=api_data, **api_env)
    with httpx.Client(base_url=again.url, timeout=10) as c:
        assert c.get(f"/api/items/{item['id']}", headers=headers).json() == item

    # compose stops dependants first: the api, then the store
    again.signal(signal.SIGTERM)
    assert again.wait(timeout=GRACEFUL_TIMEOUT + 5) == 0, again.log_tail()
    store.signal(signal.SIGTERM)
    assert store.wait(timeout=30) == 0, store.log_tail()
    assert "store stopped" in store.logs()
    assert bad_log_lines(store.logs() + api.logs() + again.logs()) == []


def test_store_restarted_under_a_running_api(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """`docker compose restart store` as processes: with api workers connected to it, SIGTERM
    makes the store exit 0 cleanly (no traceback in its log); while it is gone the api answers
    503 with Retry-After (never 500) to /readyz and to writes; once a store is back on the same
    address the api reconnects by itself and the data is intact."""
    store_port = free_port()
    store_data = deployment.data_dir()
    store_args = ["store", "--listen", f"tcp:127.0.0.1:{store_port}", "--data-dir", str(store_data)]
    store = deployment.command("store-1", store_args, deployment.env(REDIS_URL=redis_server.url))
    store.wait_listening("127.0.0.1", store_port)
    api = deployment.serve(
        "api",
        workers=2,
        DUCKCAST_STORE_URL=f"tcp:127.0.0.1:{store_port}",
        REDIS_URL=redis_server.url,
    )
    with httpx.Client(base_url=api.url, timeout=10) as c:
        headers = register_and_login(c, "restart")
        r = c.post("/api/items", json={"title": "before"}, headers=headers)
        assert r.status_code == 201, r.text
        item = r.json()

        store.signal(signal.SIGTERM)
        rc = store.wait(timeout=30)
        r = c.get("/readyz")
        assert r.status_code == 503 and "retry-after" in r.headers, r.text
        r = c.post("/api/items", json={"title": "while down"}, headers=headers)
        assert r.status_code == 503 and "retry-after" in r.headers, r.text

        again = deployment.command(
            "store-2", store_args, deployment.env(REDIS_URL=redis_server.url)
        )
        again.wait_listening("127.0.0.1", store_port)
        api.wait_ready(timeout=15)
        assert c.get(f"/api/items/{item['id']}", headers=headers).json() == item
        r = c.post("/api/items", json={"title": "after"}, headers=headers)
        assert r.status_code == 201, r.text
    assert api.running(), "the api must outlive a store restart"
    assert rc == 0, store.log_tail()
    assert "store stopped" in store.logs()
    # an INFO line of a worker leaves in its next batch (at most 100 ms later: README > Logs)
    wait_until(lambda: "store connection restored" in api.logs(), timeout=5)
    assert bad_log_lines(store.logs()) == [], store.log_tail()
    assert bad_log_lines(api.logs() + again.logs()) == []


def test_supervisor_sigterm_stops_the_whole_tree(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """SIGTERM to the `serve --workers 2` supervisor alone (as `docker stop` sends it) stops
    gunicorn, its workers and the store within gunicorn's graceful timeout, exit code 0, with no
    process of the tree left behind; the store shuts down cleanly rather than being killed."""
    api = deployment.serve(workers=2, REDIS_URL=redis_server.url)
    with httpx.Client(base_url=api.url, timeout=10) as c:
        headers = register_and_login(c, "sigterm")
        assert c.post("/api/items", json={"title": "x"}, headers=headers).status_code == 201
    tree = descendants(api.pid)
    assert sum(1 for p in tree if is_store(p)) == 1
    assert sum(1 for p in tree if is_gunicorn(p)) == 3, tree  # master + 2 workers

    started = time.monotonic()
    api.signal(signal.SIGTERM)
    assert api.wait(timeout=GRACEFUL_TIMEOUT + 10) == 0, api.log_tail()
    took = time.monotonic() - started
    assert took < GRACEFUL_TIMEOUT, f"shutdown took {took:.1f}s"
    left = [p for p in tree if alive(p)]
    assert left == [], f"orphaned processes: {left}"
    assert "store stopped" in api.logs()
    assert bad_log_lines(api.logs()) == []


def test_gunicorn_master_death_stops_everything(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """The supervisor's contract: if gunicorn exits, everything stops. After kill -9 of the
    gunicorn master the supervisor exits non-zero, stops its store, and no worker is left
    behind holding the port (an orphaned worker would answer 503 forever and block a restart)."""
    api = deployment.serve(workers=2, REDIS_URL=redis_server.url)
    tree = descendants(api.pid)
    [master] = [p for p in children(api.pid) if is_gunicorn(p)]
    [store] = [p for p in children(api.pid) if is_store(p)]
    workers = children(master)
    assert len(workers) == 2

    os.kill(master, signal.SIGKILL)
    rc = api.wait(timeout=30)
    assert rc != 0, "gunicorn died: the supervisor must not report success"
    assert not alive(store), "the supervisor left its store running"
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not any(alive(p) for p in tree), timeout=5)
    left = {p: " ".join(cmdline(p)) for p in tree if alive(p)}
    assert left == {}, "processes left behind after gunicorn died"


def test_ctrl_c_stops_the_workers_before_the_store(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group. The store
    runs in a group of its own, so only the supervisor acts on it: gunicorn (and its workers)
    stop first, then the store, which so never shuts down under workers still sending it
    writes; the supervisor exits 0."""
    api = deployment.serve(workers=2, REDIS_URL=redis_server.url)
    [store] = [p for p in children(api.pid) if is_store(p)]
    assert os.getpgid(store) != os.getpgid(api.pid)

    os.killpg(api.pid, signal.SIGINT)  # the terminal's Ctrl-C (e2e processes lead a group)
    assert api.wait(timeout=GRACEFUL_TIMEOUT + 10) == 0, api.log_tail()
    logs = api.logs()
    assert logs.index("Shutting down: Master") < logs.index("store stopped"), api.log_tail()
    assert not alive(store)
    assert bad_log_lines(logs) == []


def test_a_store_whose_supervisor_is_killed_stops_by_itself(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """With a process group of its own the store is out of reach of a kill aimed at the
    supervisor's group; if the supervisor dies outright, the store notices it was orphaned
    and shuts down cleanly instead of holding the database forever."""
    api = deployment.serve(workers=2, REDIS_URL=redis_server.url)
    [store] = [p for p in children(api.pid) if is_store(p)]
    [master] = [p for p in children(api.pid) if is_gunicorn(p)]
    os.kill(api.pid, signal.SIGKILL)
    try:
        wait_until(lambda: not alive(store), timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(master, signal.SIGKILL)  # gunicorn leads its own group too
    assert "the supervisor is gone" in api.logs()
    assert "store stopped" in api.logs()
