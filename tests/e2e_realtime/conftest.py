"""Realtime e2e fixtures: `duckcast serve --workers 3` against a private redis-server; gunicorn's
workers, their memory, and which worker holds which client come from loadtests/harness.py.

The service runs in its own process group (teardown reaches the supervisor, the store, the
gunicorn master and its workers); its output goes to files under the test's tmp_path.
Readiness is polled on GET /readyz, never slept for. The data dir is under /tmp, not pytest's
deep tmp_path, because the store's AF_UNIX socket lives there (paths must stay < 108 bytes).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.harness import (
    RedisServer,
    children,
    cmdline,
    free_port,
    group_members,
    rss_bytes,
    tcp_peers,
)
from tests.conftest import wait_until
from tests.leakscan import remember

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3


# -- the service ------------------------------------------------------------------------------


class Service:
    """`python -m service.cli serve --workers 3` in its own process group."""

    def __init__(self, logdir: Path, redis: RedisServer, env: dict[str, str]) -> None:
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="dcrt-", dir="/tmp"))
        self.redis = redis
        self.log_path = logdir / "serve.log"
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
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--workers",
            str(WORKERS),
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()
        wait_until(lambda: len(self.workers()) == WORKERS, timeout=30)

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll GET /readyz until 200; fail with the log if the supervisor exits first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"serve exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    r = client.get("/readyz")
                    if r.status_code == 200:
                        return
                    last = f"{r.status_code} {r.text}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.05)
        pytest.fail(f"serve not ready within {timeout}s (last: {last}):\n{self.log_tail()}")

    def master(self) -> int:
        assert self.proc is not None
        masters = [p for p in children(self.proc.pid) if "gunicorn" in cmdline(p)]
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
        if self.proc is not None:
            pgid = self.proc.pid
            if group_members(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                try:
                    wait_until(lambda: not group_members(pgid), timeout=15, interval=0.05)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, signal.SIGKILL)
                    wait_until(lambda: not group_members(pgid), timeout=10, interval=0.05)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

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
