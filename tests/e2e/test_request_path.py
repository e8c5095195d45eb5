"""The shared request path under gunicorn with 2 workers: access lines are written in batches
(service.logging) and a graceful stop loses none of them; a request is counted before its
answer leaves (service.api.edge), so /metrics from either worker sees every answered one."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisServer
from tests.e2e.conftest import Deployment

pytestmark = pytest.mark.e2e

REQUESTS = 300


def test_a_graceful_stop_writes_every_access_line(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    """Requests to both workers, then SIGTERM at once (their last lines are still held by
    the handlers, at most 100 ms old): every request has its line after the stop."""
    api = deployment.serve(workers=2, REDIS_URL=redis_server.url)
    ids = [f"stop-{n}" for n in range(REQUESTS)]
    with httpx.Client(base_url=api.url, timeout=10) as client:
        for request_id in ids:
            r = client.get("/healthz", headers={"X-Request-ID": request_id})
            assert r.status_code == 200
    api.signal(signal.SIGTERM)
    assert api.wait(timeout=30) == 0, api.log_tail()
    records = [json.loads(line) for line in api.stderr_path.read_text().splitlines() if line]
    access = [r["request_id"] for r in records if r["logger"] == "duckcast.access"]
    assert sorted(i for i in access if i.startswith("stop-")) == sorted(ids)


def test_a_scrape_after_n_answers_sees_n(deployment: Deployment, redis_server: RedisServer) -> None:
    """Each request on a new connection (either worker accepts it), then /metrics (either
    worker answers it): the request counter holds every answer the client has, at once."""
    api = deployment.serve(workers=2, REDIS_URL=redis_server.url)
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=api.url, timeout=10, limits=fresh) as client:
        for n in range(1, REQUESTS // 10 + 1):
            assert client.get("/healthz").status_code == 200
            text = client.get("/metrics").text
            (family,) = [
                f
                for f in text_string_to_metric_families(text)
                if f.name == "duckcast_http_requests"
            ]
            counted = sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total")
                and s.labels["route"] == "/healthz"
                and s.labels["status"] == "200"
            )
            assert counted == n
