"""Shared fixtures: real DuckDB files in temp dirs, a real redis-server on a free port, and the
real app served in-process through its lifespan."""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.api.app import create_app
from service.config import Settings
from tests.leakscan import SCAN, log_files, wrap_httpx, wrap_logging


@pytest.fixture(scope="session", autouse=True)
def no_secrets_in_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails the run if any log record emitted in this process, or any log file a subprocess
    wrote under the run's temporary directory, holds a token, password, cookie or secret
    issued during the run (tests/leakscan.py says what counts). INFO records are kept too:
    that is the level the service runs at."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(min(level, logging.INFO))
    restore = wrap_logging(SCAN) + wrap_httpx(SCAN)
    try:
        yield
    finally:
        for owner, name, original in restore:
            setattr(owner, name, original)
        root.setLevel(level)
    problems = SCAN.scan(log_files(tmp_path_factory.getbasetemp()))
    if problems:
        pytest.fail("secrets in the logs:\n" + "\n".join(problems[:20]), pytrace=False)


# Ports for servers under test come from below the kernel's ephemeral range (32768-60999 by
# default): a port the kernel hands out can be taken by any outgoing connection between our
# check and the server's bind (seen: gunicorn giving up its bind in a busy run). Each port is
# offered once per test process; the seed keeps concurrent test processes apart.
_CANDIDATE_PORTS = iter(random.Random(os.getpid()).sample(range(20000, 32000), 12000))


def free_port() -> int:
    for port in _CANDIDATE_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left below the ephemeral range")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    """Poll for a condition instead of sleeping a fixed time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


class RedisServer:
    """A private redis-server that a test may stop and start again on the same port."""

    def __init__(
        self, workdir: Path, *args: str, username: str | None = None, password: str | None = None
    ) -> None:
        """`args`: extra redis-server options (e.g. --requirepass, --user); `username` and
        `password`: what the readiness ping authenticates with."""
        self.port = free_port()
        self.workdir = workdir
        self.args = list(args)
        self.username, self.password = username, password
        self.tls_ca: Path | None = None  # set: the readiness ping speaks TLS, trusting this CA
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        tls = {"ssl": True, "ssl_ca_certs": str(self.tls_ca)} if self.tls_ca else {}
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=self.username,
            password=self.password,
            **tls,  # type: ignore[arg-type]
        )
        try:
            wait_until(lambda: _pings(client))
        finally:
            client.close()

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop(kill=True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", environment="development")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (embedded store on a real DuckDB file) with its lifespan running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def signup(
    client: httpx.AsyncClient, username: str, password: str = "correct horse"
) -> dict[str, str]:
    """Register and log in; returns the Authorization header for that user."""
    r = await client.post("/api/register", json={"username": username, "password": password})
    assert r.status_code == 201, r.text
    r = await client.post("/api/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}
