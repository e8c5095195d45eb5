"""/readyz fails only when this worker cannot serve: the store unreachable. A dead backplane
(Redis) is `degraded` in the body and in duckcast_backplane_connected, never a 503: events
still reach subscribers from the store's log, so a Redis blip must not take every worker out
of a load balancer. And what a worker without its store still owes a user: signing out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.config import Settings
from tests.conftest import RedisServer, free_port


async def poll(check: Callable[[], Awaitable[bool]], within: float = 20) -> None:
    """Wait for a condition by polling (never a fixed sleep standing in for an event)."""
    async with asyncio.timeout(within):
        # polling: the condition is the answer of another component, with no event to wait on
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def backplane_gauge(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "duckcast_backplane_connected" and sample.labels == {
                "backplane": "redis"
            }:
                return sample.value
    raise AssertionError("duckcast_backplane_connected{backplane='redis'} not exported")


@pytest.fixture
def settings(tmp_path: Path, redis_server: RedisServer) -> Settings:
    """`client` is then the app with its embedded store and the Redis backplane."""
    return Settings(data_dir=tmp_path / "data", redis_url=redis_server.url)


async def test_dead_redis_is_degraded_not_unready_and_recovery_is_logged(
    client: httpx.AsyncClient,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis up: 200 `ready`, gauge 1. Redis stopped: still 200, `degraded` naming the
    backplane, gauge 0, and a write still succeeds. Redis back: `ready` again, gauge 1, and
    the recovery is logged."""
    caplog.set_level(logging.INFO)

    async def status(expected: str) -> bool:
        r = await client.get("/readyz")
        assert r.status_code == 200, r.text  # never 503 while the store answers
        return bool(r.json()["status"] == expected)

    await poll(lambda: status("ready"))
    assert backplane_gauge((await client.get("/metrics")).text) == 1

    redis_server.stop()
    await poll(lambda: status("degraded"))
    body = (await client.get("/readyz")).json()
    assert body["reasons"] == ["backplane: subscription is not live"]
    assert backplane_gauge((await client.get("/metrics")).text) == 0
    r = await client.post("/api/register", json={"username": "blip", "password": "x" * 8})
    assert r.status_code == 201, r.text

    redis_server.start()
    await poll(lambda: status("ready"))
    assert backplane_gauge((await client.get("/metrics")).text) == 1
    assert any("redis subscription restored" in r.getMessage() for r in caplog.records)


async def test_unreachable_store_is_not_ready(tmp_path: Path) -> None:
    """With no store listening at DUCKCAST_STORE_URL, /readyz answers 503 `unavailable` with
    the store as the reason (and Retry-After), while /healthz still answers 200."""
    settings = Settings(data_dir=tmp_path / "data", store_url=f"tcp:127.0.0.1:{free_port()}")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get("/readyz")
            assert r.status_code == 503, r.text
            assert r.json()["status"] == "unavailable"
            assert r.json()["reasons"][0].startswith("store: ")
            assert r.headers["retry-after"] == "1"
            assert (await c.get("/healthz")).status_code == 200


async def test_logout_without_a_store_is_503_and_still_clears_the_cookie(tmp_path: Path) -> None:
    """README (Additions to the public contract): if the store cannot record the revocation,
    logout answers 503 with Retry-After (the token is not revoked: retry), and the session
    cookie is cleared all the same, so the browser is signed out either way."""
    settings = Settings(data_dir=tmp_path / "data", store_url=f"tcp:127.0.0.1:{free_port()}")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        token = app.state.signer.issue(1).value
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", cookies={settings.cookie_name: token}
        ) as c:
            r = await c.post("/api/logout", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 503, r.text
            assert "retry-after" in r.headers
            cleared = r.headers["set-cookie"]
            assert cleared.startswith(f'{settings.cookie_name}=""') or cleared.startswith(
                f"{settings.cookie_name}=;"
            ), cleared
            assert "max-age=0" in cleared.lower(), cleared
