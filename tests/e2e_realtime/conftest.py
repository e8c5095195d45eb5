"""Realtime e2e fixtures: `duckcast serve --workers 3` against a private redis-server; gunicorn's
workers, their memory, and which worker holds which client come from loadtests/harness.py.

The service runs in its own process group (teardown reaches the supervisor, the store, the
gunicorn master and its workers); its output goes to files under the test's tmp_path.
Readiness is polled on GET /readyz, never slept for. The data dir is under /tmp, not pytest's
deep tmp_path, because the store's AF_UNIX socket lives there (paths must stay < 108 bytes).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loadtests.harness import (
    ProcessGroup,
    RedisServer,
    children,
    cmdline,
    free_port,
    rss_bytes,
    tcp_peers,
    wait_http,
)
from tests.conftest import wait_until
from tests.leakscan import remember

WORKERS = 3


# -- the service ------------------------------------------------------------------------------


class Service:
    """`python -m service.cli serve --workers 3` in its own process group."""

    def __init__(self, logdir: Path, redis: RedisServer, env: dict[str, str]) -> None:
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="dcrt-", dir="/tmp"))
        self.redis = redis
        self.log_path = logdir / f"serve-{self.port}.log"
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("DUCKCAST_") and k not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")
        }
        secret = secrets.token_hex(32)
        remember(secret)  # the log scan fails the run if it shows up in a log
        base |= {
            "REDIS_URL": redis.url,
            "DUCKCAST_SECRET_KEY": secret,
            "PYTHONUNBUFFERED": "1",
        }
        self.env = base | env
        self.group: ProcessGroup | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "service.cli", "serve", "--workers", str(WORKERS),
            "--port", str(self.port), "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        self.group = ProcessGroup("serve", cmd, self.env, self.log_path)
        wait_http(f"{self.url}/readyz", self.group, timeout=60)
        wait_until(lambda: len(self.workers()) == WORKERS, timeout=30)

    def log_tail(self, lines: int = 80) -> str:
        return self.group.tail(lines) if self.group is not None else ""

    def master(self) -> int:
        assert self.group is not None
        masters = [p for p in children(self.group.pid) if "gunicorn" in cmdline(p)]
        assert len(masters) == 1, (masters, self.log_tail())
        return masters[0]

    def workers(self) -> list[int]:
        """gunicorn's live workers (children of the master)."""
        return children(self.master())

    def rss_kib(self) -> dict[int, int]:
        return {pid: rss_bytes(pid) // 1024 for pid in self.workers()}

    def worker_of_ports(self) -> dict[int, int]:
        """client port -> pid of the worker holding that connection."""
        return {port: pid for pid in self.workers() for port in tcp_peers(pid, self.port)}

    def stop(self) -> None:
        """SIGTERM the whole group, SIGKILL what is left after a grace period."""
        if self.group is not None:
            self.group.stop(grace=15)

        def removed() -> bool:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            return not self.data_dir.exists()

        wait_until(removed, timeout=10, interval=0.1)


@pytest.fixture
def start_service(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[..., Service]]:
    """Start `serve --workers 3` (extra env as keyword arguments); stopped after the test."""
    started: list[Service] = []

    def start(**env: str) -> Service:
        service = Service(tmp_path, redis_server, env)
        started.append(service)
        service.start()
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def service(start_service: Callable[..., Service]) -> Service:
    return start_service()
