"""Read-your-writes across gunicorn workers with the worker read cache: a client writes on a
connection held by one worker and reads on a connection held by another, presenting the
write's `Duckcast-Seq`, in a tight loop; no read is ever older than the write before it."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import httpx
import pytest

from loadtests.harness import children, tcp_peers
from tests.conftest import RedisServer
from tests.e2e.conftest import Deployment, DuckcastProcess, is_gunicorn, register_and_login
from tests.e2e.test_multiworker import scrape

pytestmark = pytest.mark.e2e

ROUNDS = 300


class Connection:
    """One keep-alive HTTP/1.1 connection (so one worker serves every request on it)."""

    def __init__(self, api: DuckcastProcess, auth: dict[str, str]) -> None:
        assert api.port is not None
        self.conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
        self.auth = auth
        self.request("GET", "/healthz")

    @property
    def local_port(self) -> int:
        assert self.conn.sock is not None
        port: int = self.conn.sock.getsockname()[1]
        return port

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        sent = {**self.auth, **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=sent)
        r = self.conn.getresponse()
        raw = r.read()
        answer = {k.lower(): v for k, v in r.getheaders()}
        return r.status, answer, (json.loads(raw) if raw else None)


def two_workers_apart(
    api: DuckcastProcess, auth: dict[str, str], opened: list[Connection]
) -> tuple[Connection, Connection]:
    """Two connections held by different gunicorn workers (found by their socket ports)."""
    assert api.port is not None
    (master,) = [p for p in children(api.pid) if is_gunicorn(p)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        opened.append(Connection(api, auth))
        held = {port: pid for pid in children(master) for port in tcp_peers(pid, api.port)}
        by_worker: dict[int, Connection] = {}
        for c in opened:
            if c.local_port in held:
                by_worker.setdefault(held[c.local_port], c)
        if len(by_worker) >= 2:
            writer, reader = list(by_worker.values())[:2]
            return writer, reader
    raise AssertionError("every connection landed on one worker")


def test_reads_on_another_worker_presenting_the_seq_are_never_stale(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    api = deployment.serve(workers=2, REDIS_URL=redis_server.url)
    with httpx.Client(base_url=api.url, timeout=30) as client:
        auth = register_and_login(client, "ryw")
    opened: list[Connection] = []
    try:
        check_reads(api, *two_workers_apart(api, auth, opened))
    finally:
        for c in opened:
            c.conn.close()


def check_reads(api: DuckcastProcess, writer: Connection, reader: Connection) -> None:
    with httpx.Client(base_url=api.url, timeout=30) as client:
        hits_before = scrape(client, "duckcast_read_cache_requests_total", result="hit")

    status, headers, item = writer.request("POST", "/api/items", {"title": "t0"})
    assert status == 201 and int(headers["duckcast-seq"]) >= 1
    stale: list[tuple[int, int, int]] = []
    for n in range(1, ROUNDS + 1):
        # one write on the writer's worker, then one read on the other worker
        if n % 3 == 0:
            status, headers, made = writer.request("POST", "/api/items", {"title": f"t{n}"})
            assert status == 201, made
            seq = headers["duckcast-seq"]
            status, _, page = reader.request(
                "GET", "/api/items?page=1&limit=5", headers={"Duckcast-Seq": seq}
            )
            assert status == 200, page
            if page["items"][0]["id"] != made["id"] or page["seq"] < int(seq):
                stale.append((n, page["items"][0]["id"], made["id"]))
        else:
            status, headers, item = writer.request(
                "PATCH", f"/api/items/{item['id']}", {"priority": n % 101}
            )
            assert status == 200, item
            seq = headers["duckcast-seq"]
            status, _, got = reader.request(
                "GET", f"/api/items/{item['id']}", headers={"Duckcast-Seq": seq}
            )
            assert status == 200, got
            if got["version"] != item["version"]:
                stale.append((n, got["version"], item["version"]))
    assert stale == [], f"{len(stale)} stale reads, first: {stale[:5]}"

    with httpx.Client(base_url=api.url, timeout=30) as client:
        hits = scrape(client, "duckcast_read_cache_requests_total", result="hit") - hits_before
    # the reads were answered by the cache (it is kept by events, not refilled per read)
    assert hits > ROUNDS / 2, hits
