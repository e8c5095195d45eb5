"""Fixtures for the client's end-to-end tests: one `duckcast serve --workers 2` with a private
redis-server for the whole package (starting one costs seconds), and accounts on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from service.client import Client
from tests.conftest import RedisServer
from tests.e2e.conftest import Deployment, DuckcastProcess

PASSWORD = "correct horse"


@dataclass(frozen=True)
class Account:
    username: str
    token: str
    id: int


@pytest.fixture(scope="package")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DuckcastProcess]:
    logdir = tmp_path_factory.mktemp("client-e2e")
    redis = RedisServer(logdir)
    redis.start()
    deployment = Deployment(logdir)
    try:
        yield deployment.serve(workers=2, REDIS_URL=redis.url)
    finally:
        deployment.close()
        redis.stop(kill=True)


def sign_up(service: DuckcastProcess, prefix: str) -> Account:
    username = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with Client(service.url) as api:
        api.register(username, PASSWORD)
        login = api.login(username, PASSWORD)
    return Account(username, login.token, login.user.id)


@pytest.fixture(scope="package")
def account(service: DuckcastProcess) -> Account:
    return sign_up(service, "owner")
