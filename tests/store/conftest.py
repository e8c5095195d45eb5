"""Store fixtures: real engines on a real DuckDB file, a real StoreServer on a short Unix socket
path, and a gate that parks the writer thread so tests can line writes up behind it."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.keys import Keys
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.store.engine import StoreEngine
from service.store.server import StoreServer
from service.storeclient.inprocess import InProcessStoreClient
from service.storeclient.socket import SocketStoreClient
from tests.seed import seed_users

OpenEngine = Callable[..., StoreEngine]
# The handshake key both ends of a test connection share (service.keys derives the real one).
STORE_KEY = Keys.from_secret(b"store tests: not a deployment's secret").store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.duckdb"


@pytest.fixture
def open_engine(db_path: Path) -> Iterator[OpenEngine]:
    """Opens engines on the test's DuckDB file (close one before reopening); all are closed at
    teardown (closing twice is a no-op)."""
    engines: list[StoreEngine] = []

    def _open(**options: Any) -> StoreEngine:
        options.setdefault("read_threads", 2)
        if not db_path.exists():
            seed_users(db_path)
        engine = StoreEngine(db_path, **options)
        engine.open()
        engines.append(engine)
        return engine

    yield _open
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(open_engine: OpenEngine) -> StoreEngine:
    return open_engine()


@pytest.fixture
def store(engine: StoreEngine) -> InProcessStoreClient:
    """Typed calls straight into the engine (its lifecycle belongs to the `engine` fixture)."""
    return InProcessStoreClient(engine)


class WriterGate:
    """Parks the engine's writer thread inside a batch observer (after COMMIT, before the acks are
    delivered), so that writes submitted meanwhile queue up behind it and form the next batch.

    `sizes` records the size of every committed batch, in order."""

    _names = itertools.count(1)

    def __init__(self, engine: StoreEngine) -> None:
        self.engine = engine
        self.sizes: list[int] = []
        self._armed = False
        self._parked = threading.Event()
        self._release = threading.Event()
        engine.add_batch_observer(self._observe)

    def _observe(self, size: int, seconds: float) -> None:
        self.sizes.append(size)
        if self._armed:
            self._armed = False
            self._parked.set()
            self._release.wait(30)

    def arm(self) -> None:
        """The next committed batch parks the writer until `release()`."""
        self._parked.clear()
        self._release.clear()
        self._armed = True

    async def parked(self) -> None:
        if not await asyncio.to_thread(self._parked.wait, 10):
            raise AssertionError("the writer never reached the gate")

    def release(self) -> None:
        self._release.set()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Inside the block the writer is parked behind a write of its own (a user, so no item
        and no event), and everything submitted queues up; on exit it is let go."""
        self.arm()
        name = f"gate-{next(self._names)}"
        blocker = asyncio.create_task(
            self.engine.handle(spb.StoreRequest(create_user=spb.CreateUser(username=name)))
        )
        try:
            await self.parked()
            yield
        finally:
            self.release()
            resp = await blocker
        assert resp.WhichOneof("result") == "user", resp


@pytest.fixture
def gate(engine: StoreEngine) -> Iterator[WriterGate]:
    g = WriterGate(engine)
    yield g
    g.release()  # never leave the writer parked: closing the engine would wait for it


async def settle() -> None:
    """Let every task that is ready run up to its first real suspension point (for a write:
    queued in the writer)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def wait_until(
    predicate: Callable[[], bool], within: float = 10.0, interval: float = 0.01
) -> None:
    """Poll for a condition (or for a clock to pass a deadline) instead of sleeping a fixed time."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


def creates(*titles: str, **fields: Any) -> list[pb.ItemCreate]:
    return [pb.ItemCreate(title=t, **fields) for t in titles]


# -- socket transport ---------------------------------------------------------------------------


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory: AF_UNIX paths max out at 107 bytes, pytest's tmp_path may be longer."""
    path = Path(tempfile.mkdtemp(prefix="dc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Served:
    engine: StoreEngine
    server: StoreServer
    client: SocketStoreClient
    url: str


@pytest.fixture
async def served(engine: StoreEngine, sock_dir: Path) -> AsyncIterator[Served]:
    """The engine behind a real StoreServer on a Unix socket, and a client connected to it."""
    url = f"unix:{sock_dir}/store.sock"
    server = StoreServer(engine, url, key=STORE_KEY)
    await server.start()
    client = SocketStoreClient(url, key=STORE_KEY)
    try:
        yield Served(engine, server, client, url)
    finally:
        await client.close()
        await server.close()
