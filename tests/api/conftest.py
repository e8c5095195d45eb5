"""Fixtures for the API contract tests.

`app`/`client` are the same real app as tests/conftest.py (embedded DuckDB store through its
lifespan, httpx over ASGI) but also expose the app, so fixtures can create users through the
real store with one argon2 hash computed per session and mint tokens with the app's own signer.
That keeps the suite fast; the tests of register/login themselves go through HTTP.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service.api.app import create_app
from service.api.auth import hash_password
from service.config import Settings
from tests.api.wire import MEDIA_IDS, MEDIA_TYPES, Wire

PASSWORD = "correct horse"


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="session")
def password_hash() -> str:
    """One real argon2 hash of PASSWORD, shared by every fixture user."""
    return hash_password(PASSWORD)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


MakeUser = Callable[[str], Awaitable[Account]]


@pytest.fixture
def make_user(app: FastAPI, password_hash: str) -> MakeUser:
    """A user created through the real store (password PASSWORD) with a token from the app's
    signer, exactly what a successful login would hand out."""

    async def make(username: str) -> Account:
        user = await app.state.store.create_user(username, password_hash)
        token = app.state.signer.issue(user.id)
        return Account(user.id, username, token.value)

    return make


@pytest.fixture
async def alice(make_user: MakeUser) -> Account:
    return await make_user("alice")


@pytest.fixture
async def bob(make_user: MakeUser) -> Account:
    return await make_user("bob")


@pytest.fixture(params=MEDIA_TYPES, ids=MEDIA_IDS)
def wire(request: pytest.FixtureRequest) -> Wire:
    """Each test that takes `wire` runs once per media type (request body and Accept)."""
    return Wire(request.param)


@pytest.fixture(params=MEDIA_TYPES[1:], ids=MEDIA_IDS[1:])
def pb_wire(request: pytest.FixtureRequest) -> Wire:
    """The two protobuf media types."""
    return Wire(request.param)


@dataclass
class SmallApp:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[SmallApp]:
    """The real app built with `settings`, through its lifespan, and a client for it."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield SmallApp(application, c, settings)


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[SmallApp]:
    """The real app built with small body and upload limits (2048 and 1024 bytes)."""
    settings = Settings(data_dir=tmp_path / "d", max_body_bytes=2048, upload_max_bytes=1024)
    async with running(settings) as served:
        yield served
