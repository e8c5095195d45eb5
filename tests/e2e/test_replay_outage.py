"""A resume that needs the store's log while the store is gone (README, Change streams): the SSE
stream sends `event: error` and ends, the WebSocket closes 1011, so that clients reconnect with
backoff and resume; each is counted closed with reason `error`. Real processes: a standalone
`duckcast store`, an api worker using it, Redis."""

from __future__ import annotations

import re
import signal

import httpx
import pytest
from httpx_sse import connect_sse
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import RedisServer, free_port
from tests.e2e.conftest import Deployment, register_and_login

pytestmark = pytest.mark.e2e


def closes(metrics: str, transport: str, reason: str) -> float:
    labels = f'reason="{reason}",transport="{transport}"'
    pattern = rf"^duckcast_stream_closes_total\{{{labels}\}} (\S+)$"
    found = re.search(pattern, metrics, flags=re.M)
    assert found, f"no closes sample for {transport}/{reason}"
    return float(found.group(1))


def test_a_resume_from_the_log_while_the_store_is_down_ends_with_error_and_1011(
    deployment: Deployment, redis_server: RedisServer
) -> None:
    store_port = free_port()
    store_args = ["store", "--listen", f"tcp:127.0.0.1:{store_port}"]
    store = deployment.command(
        "store",
        [*store_args, "--data-dir", str(deployment.data_dir())],
        deployment.env(REDIS_URL=redis_server.url),
    )
    store.wait_listening("127.0.0.1", store_port)
    api = deployment.serve(
        "api",
        workers=1,
        DUCKCAST_STORE_URL=f"tcp:127.0.0.1:{store_port}",
        REDIS_URL=redis_server.url,
        # the worker's ring keeps only the newest event: a resume from 0 reads the store's log
        DUCKCAST_STREAM_RING_EVENTS="1",
    )
    with httpx.Client(base_url=api.url, timeout=15) as c:
        headers = register_and_login(c, "replay")
        for n in range(3):
            assert c.post("/api/items", json={"title": f"t{n}"}, headers=headers).status_code == 201
        store.signal(signal.SIGTERM)
        assert store.wait(timeout=30) == 0, store.log_tail()

        with connect_sse(c, "GET", "/api/events", headers={**headers, "Last-Event-ID": "0"}) as s:
            assert s.response.status_code == 200
            events = [(e.event, e.data) for e in s.iter_sse()]
        assert [name for name, _ in events] == ["connected", "error"], events
        assert events[1][1], "the error names what failed"

        token = headers["Authorization"].removeprefix("Bearer ")
        ws_url = f"{api.url.replace('http', 'ws', 1)}/ws/items?token={token}&since=0"
        with connect(ws_url, open_timeout=15, close_timeout=15) as ws:
            try:
                got = ws.recv(timeout=15)
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1011, closed
            else:
                raise AssertionError(f"an event from a store that is down: {got!r}")

        metrics = c.get("/metrics").text
        assert closes(metrics, "sse", "error") == 1
        assert closes(metrics, "ws", "error") == 1
