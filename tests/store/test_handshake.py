"""The store protocol's handshake (service.storeclient.handshake): a connection that does not
prove the shared secret gets no answer from the store and is disconnected before any request
is read; the files that hold the data are the owner's only."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from service.errors import StoreUnavailable
from service.keys import Keys
from service.pb import store_pb2 as spb
from service.store.engine import StoreEngine
from service.store.server import StoreServer
from service.storeclient.handshake import MAGIC, NONCE_BYTES, client_handshake
from service.storeclient.protocol import encode_frame
from service.storeclient.socket import SocketStoreClient
from tests.conftest import free_port
from tests.store.conftest import STORE_KEY, Served

WRONG_KEY = Keys.from_secret(b"somebody else's secret").store
# Longer than the handshake's opening (40 bytes), so a store that read it as one would answer.
REQUEST = encode_frame(
    spb.StoreRequest(
        id=1, get_user_by_name=spb.GetUserByName(username="user1" + " " * 60)
    ).SerializeToString()
)


def refused() -> float:
    return REGISTRY.get_sample_value("duckcast_store_handshakes_refused_total") or 0.0


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything the store sends until it closes the connection (within 10 s)."""
    async with asyncio.timeout(10):
        return await reader.read()


@pytest.fixture
async def tcp_store(engine: StoreEngine) -> AsyncIterator[StoreServer]:
    server = StoreServer(engine, f"tcp:127.0.0.1:{free_port()}", key=STORE_KEY)
    await server.start()
    yield server
    await server.close()


async def test_a_raw_client_gets_nothing_and_is_disconnected(tcp_store: StoreServer) -> None:
    """A client that speaks the frame protocol without the handshake (a request for a user's
    password hash) gets zero bytes back, and the store closes the connection."""
    host, port = tcp_store._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    before = refused()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(REQUEST)
        await writer.drain()
        assert await read_all(reader) == b""
    finally:
        writer.close()
        await writer.wait_closed()
    assert refused() == before + 1


async def test_a_client_with_the_wrong_key_gets_no_answer(tcp_store: StoreServer) -> None:
    """With the protocol's opening but the wrong key, the client receives the store's nonce
    (the challenge) and nothing else: its proof fails and the request that follows is never
    read or answered."""
    host, port = tcp_store._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        with pytest.raises(Exception, match=r"shared secret|closed the connection"):
            await client_handshake(reader, writer, WRONG_KEY)
        writer.write(REQUEST)
        assert await read_all(reader) == b""
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_client_that_replays_a_proof_is_refused(tcp_store: StoreServer) -> None:
    """A proof recorded from one connection is useless on the next: the store's nonce
    differs every time."""
    host, port = tcp_store._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    nonce = b"n" * NONCE_BYTES
    challenges = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(MAGIC + nonce)
        challenges.append(await reader.readexactly(NONCE_BYTES))
        writer.write(b"\0" * 32)
        assert await read_all(reader) == b""
        writer.close()
        await writer.wait_closed()
    assert challenges[0] != challenges[1]


async def test_the_socket_client_with_the_wrong_key_says_so(served: Served) -> None:
    """A worker whose secret differs from the store's gets StoreUnavailable naming the cause
    (a misconfiguration must be obvious from the worker's log)."""
    client = SocketStoreClient(served.url, key=WRONG_KEY)
    try:
        with pytest.raises(StoreUnavailable, match="secret key"):
            await client.ping()
    finally:
        await client.close()
    assert await served.client.ping() >= 0  # the right key still works


async def test_a_store_that_cannot_prove_the_secret_gets_no_request(sock_dir: Path) -> None:
    """The client checks the store's proof before it sends anything: an impostor listening
    on the store's address (which would collect password hashes) receives no request."""
    received = bytearray()
    done = asyncio.Event()

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            received.extend(await reader.readexactly(len(MAGIC) + NONCE_BYTES))
            writer.write(b"c" * NONCE_BYTES)
            received.extend(await reader.readexactly(32))  # the client's proof
            writer.write(b"\0" * 32)  # not a proof
            received.extend(await reader.read())  # until the client hangs up
        finally:
            writer.close()
            await writer.wait_closed()
            done.set()

    path = sock_dir / "s.sock"
    server = await asyncio.start_unix_server(impostor, path=str(path))
    client = SocketStoreClient(f"unix:{path}", key=STORE_KEY)
    try:
        with pytest.raises(StoreUnavailable, match="did not prove"):
            await client.create_user("victim", "argon2-hash-of-the-victim")
        async with asyncio.timeout(10):
            await done.wait()
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    assert b"argon2-hash" not in received and len(received) == len(MAGIC) + NONCE_BYTES + 32


async def test_files_are_the_owners_only(sock_dir: Path) -> None:
    """The data dir (0700), the DuckDB file (0600) and the store's Unix socket (0600), even
    when the process's umask would allow more and the data dir already existed open."""
    data = sock_dir / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    engine = StoreEngine(data / "duckcast.duckdb", read_threads=1)
    engine.open()
    server = StoreServer(engine, f"unix:{data}/store.sock", key=STORE_KEY)
    try:
        await server.start()
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "duckcast.duckdb").stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "store.sock").stat().st_mode) == 0o600
    finally:
        await server.close()
        engine.close()
