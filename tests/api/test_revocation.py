"""Logout ends a token on every worker (service.api.revocation): recorded in the store, each
worker's set filled by its poll, checked on every request without a store call.

Two apps here share one real store engine, as two gunicorn workers share the store process;
each poll is triggered by hand, so the tests do not depend on timing (tests/e2e covers the
real interval under gunicorn)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.api.app import create_app
from service.config import Settings
from service.keys import Keys
from service.pb import store_pb2 as spb
from service.store.engine import StoreEngine
from service.storeclient.inprocess import InProcessStoreClient
from tests.seed import seed_users

KEYS = Keys.from_secret(b"revocation tests: one deployment's secret")
NEVER_MS = 10_000  # the longest poll interval: no poll runs by itself during a test


class SharedEngine:
    """The engine as a LocalStore whose lifecycle belongs to the test, not to either app."""

    def __init__(self, engine: StoreEngine) -> None:
        self.engine = engine

    async def handle(self, req: spb.StoreRequest) -> spb.StoreResponse:
        return await self.engine.handle(req)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


Worker = tuple[FastAPI, httpx.AsyncClient]
StartWorker = Callable[[], Awaitable[Worker]]


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[StartWorker]:
    seed_users(tmp_path / "store.duckdb")
    engine = StoreEngine(tmp_path / "store.duckdb", read_threads=1)
    engine.open()
    async with AsyncExitStack() as stack:

        async def start() -> Worker:
            settings = Settings(data_dir=tmp_path / "data", revocation_poll_ms=NEVER_MS)
            store = InProcessStoreClient(SharedEngine(engine))
            app = create_app(settings, store=store, keys=KEYS)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            await stack.enter_async_context(client)
            await app.state.revocations.synced.wait()
            return app, client

        yield start
    engine.close()


async def me(worker: Worker, token: str) -> int:
    r = await worker[1].get("/api/me", headers={"Authorization": f"Bearer {token}"})
    return r.status_code


async def test_logout_on_one_worker_ends_the_token_on_every_worker(workers: StartWorker) -> None:
    """Worker A logs the token out: A refuses it at once; B refuses it after its next poll
    (and not before: the poll, not a store call per request, carries it); a worker started
    later refuses it from its first request; another token of the same user still works."""
    a, b = await workers(), await workers()
    token = a[0].state.signer.issue(1).value
    other = a[0].state.signer.issue(1).value
    assert await me(a, token) == await me(b, token) == 200

    r = await a[1].post("/api/logout", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 204
    assert await me(a, token) == 401
    assert await me(b, token) == 200  # B has not polled yet

    await b[0].state.revocations.poll()
    assert await me(b, token) == 401
    later = await workers()
    assert await me(later, token) == 401
    for worker in (a, b, later):
        assert await me(worker, other) == 200


async def test_logout_revokes_the_cookie_and_the_bearer_token_it_is_sent(
    workers: StartWorker,
) -> None:
    """A logout that carries both a bearer token and a (different) session cookie ends both:
    the cookie it clears must not stay usable as a copied bearer token."""
    (a_app, a_client), b = await workers(), await workers()
    cookie_name = a_app.state.settings.cookie_name
    bearer, cookie = (a_app.state.signer.issue(2).value for _ in range(2))
    r = await a_client.post(
        "/api/logout",
        headers={"Authorization": f"Bearer {bearer}", "Cookie": f"{cookie_name}={cookie}"},
    )
    assert r.status_code == 204
    await b[0].state.revocations.poll()
    for token in (bearer, cookie):
        assert await me(b, token) == 401


async def test_revocations_survive_a_store_restart(tmp_path: Path) -> None:
    """The store keeps revocations in DuckDB: a store opened again on the file still hands
    them to a worker that asks from the start."""
    seed_users(tmp_path / "s.duckdb")
    engine = StoreEngine(tmp_path / "s.duckdb", read_threads=1)
    engine.open()
    store = InProcessStoreClient(engine)
    await store.revoke_token("t-1", 2**40)
    await store.revoke_token("t-expired", 1)
    engine.close()

    engine = StoreEngine(tmp_path / "s.duckdb", read_threads=1)
    engine.open()
    try:
        answer = await InProcessStoreClient(engine).revocations_since(0)
        assert [r.token_id for r in answer.revocations] == ["t-1"]  # the expired one is gone
        assert answer.last_rev == 2
        ahead = await InProcessStoreClient(engine).revocations_since(99)  # a newer store
        assert ahead.reset and [r.token_id for r in ahead.revocations] == ["t-1"]
    finally:
        engine.close()
