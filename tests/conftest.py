"""Shared fixtures: real DuckDB files in temp dirs, a real redis-server on a free port (both
from loadtests/harness.py, which the benchmarks use too), and the real app served
in-process through its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from loadtests import harness
from loadtests.harness import RedisServer as RedisServer  # the tests import both from here
from loadtests.harness import free_port as free_port
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


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    """Poll for a condition instead of sleeping a fixed time."""
    if not harness.wait_until(predicate, timeout, interval):
        raise TimeoutError(f"condition not met within {timeout}s")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that a test may stop and start again on the same port."""
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
