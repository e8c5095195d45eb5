"""Brute-force protection: failed logins are counted per (name, address), per address and per
name, in Redis when there is one; past a limit, 429 with Retry-After, checked before any
password hashing. Hashing itself runs on a bounded pool."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.api.hashing import HashingBusy, PasswordHashing
from service.api.throttle import LoginLimits, LoginThrottle, MemoryCounts, RedisCounts
from service.config import Settings
from service.errors import TooManyRequests
from tests.api.conftest import PASSWORD, MakeUser
from tests.api.wire import error_message
from tests.conftest import RedisServer

ATTACKER, OWNER = "203.0.113.7", "198.51.100.9"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Small limits: every failed login below them costs a real argon2 hash."""
    return Settings(
        data_dir=tmp_path / "data",
        login_failures_per_name_and_address=3,
        login_failures_per_address=6,
    )


@pytest.fixture
async def from_address(app: FastAPI) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """One client per source address, all against the same app."""
    clients = {
        address: httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(address, 40000)), base_url="http://t"
        )
        for address in (ATTACKER, OWNER)
    }
    yield clients
    for c in clients.values():
        await c.aclose()


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post("/api/login", json={"username": username, "password": password})


async def test_guessing_one_password_from_one_address_is_throttled_but_not_the_owner(
    from_address: dict[str, httpx.AsyncClient], make_user: MakeUser
) -> None:
    """20 wrong passwords for one user from one address: 401 until the threshold (3 here),
    then 429 with Retry-After; the right password from that address is refused too, and
    from another address it still works."""
    await make_user("victim")
    attacker, owner = from_address[ATTACKER], from_address[OWNER]
    statuses = []
    for n in range(20):
        r = await login(attacker, "victim", f"guess-{n}")
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert 1 <= int(r.headers["retry-after"]) <= 900
            assert "too many failed logins" in error_message(r)
    assert statuses == [401] * 3 + [429] * 17
    assert (await login(attacker, "victim", PASSWORD)).status_code == 429
    r = await login(owner, "victim", PASSWORD)
    assert r.status_code == 200, r.text


async def test_one_address_trying_many_names_is_throttled(
    from_address: dict[str, httpx.AsyncClient], make_user: MakeUser
) -> None:
    await make_user("someone")
    attacker = from_address[ATTACKER]
    for n in range(6):  # 2 guesses each for 3 names: under the per-(name, address) limit
        assert (await login(attacker, f"name{n // 2}", "wrong-password")).status_code == 401
    assert (await login(attacker, "someone", PASSWORD)).status_code == 429
    assert (await login(from_address[OWNER], "someone", PASSWORD)).status_code == 200


async def test_counts_in_redis_are_shared_by_every_worker(redis_server: RedisServer) -> None:
    """Two throttles on one Redis (two workers) add up each other's failures; the window
    ends with the key's TTL, which Retry-After reports."""
    limits = LoginLimits(per_name_and_address=3, per_address=10, per_name=10, window_seconds=60)
    workers = [LoginThrottle(RedisCounts(redis_server.url), limits) for _ in range(2)]
    try:
        for n in range(3):
            await workers[n % 2].check("bob", ATTACKER)
            await workers[n % 2].failed("bob", ATTACKER)
        for worker in workers:
            with pytest.raises(TooManyRequests) as exc:
                await worker.check("bob", ATTACKER)
            assert 1 <= exc.value.retry_after <= 60
        await workers[0].check("bob", OWNER)  # another address is not affected
    finally:
        for worker in workers:
            assert isinstance(worker.counts, RedisCounts)
            await worker.counts.close()


async def test_while_redis_is_down_failures_are_counted_in_memory(
    redis_server: RedisServer,
) -> None:
    counts = RedisCounts(redis_server.url)
    throttle = LoginThrottle(counts, LoginLimits(per_name_and_address=2))
    redis_server.stop(kill=True)
    try:
        for _ in range(2):
            await throttle.check("bob", ATTACKER)
            await throttle.failed("bob", ATTACKER)
        with pytest.raises(TooManyRequests):
            await throttle.check("bob", ATTACKER)
    finally:
        await counts.close()


async def test_memory_counts_are_bounded_and_expire() -> None:
    counts = MemoryCounts(entries=3)
    await counts.add(["a", "b", "c", "d"], window=60)
    assert await counts.get(["a", "d"]) == [(0, 0), (1, 60)]
    await counts.add(["e"], window=0)  # a window that has already ended
    assert await counts.get(["e"]) == [(0, 0)]


async def test_hashing_runs_on_a_bounded_pool_and_refuses_beyond_it() -> None:
    """At most threads + queue hashes are in the pool; one more is refused at once (503)
    rather than queued without bound."""
    pool = PasswordHashing(threads=1, queue=1)
    release = threading.Event()
    try:
        running = [asyncio.create_task(pool.run(release.wait, 10)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(HashingBusy):
            await pool.run(lambda: None)
        release.set()
        assert await asyncio.gather(*running) == [True, True]
        assert await pool.run(lambda: 42) == 42
    finally:
        release.set()
        pool.close()
