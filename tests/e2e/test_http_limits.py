"""Request-head limits on a real gunicorn worker (service.worker.BoundedHttpProtocol): headers
over the limit get 431 at once, a head that does not complete in time is closed, and the
worker's memory stays small however many such connections it holds."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from loadtests.harness import children, rss_bytes
from tests.conftest import free_port, wait_until
from tests.e2e.conftest import Deployment, DuckcastProcess, is_gunicorn

pytestmark = pytest.mark.e2e

HEAD_TIMEOUT = 2.0
MiB = 1024 * 1024
# RSS the worker may gain while it holds 100 connections: each keeps at most its unfinished
# head (< 64 KiB here) plus a read buffer and the protocol objects.
RSS_BOUND = 24 * MiB


@pytest.fixture
def worker(deployment: Deployment) -> Iterator[tuple[DuckcastProcess, int]]:
    """`serve --workers 1` against a separately started store: one gunicorn worker."""
    store_port = free_port()
    store = deployment.command(
        "store",
        [
            "store",
            "--listen",
            f"tcp:127.0.0.1:{store_port}",
            "--data-dir",
            str(deployment.data_dir()),
        ],
        deployment.env(),
    )
    store.wait_listening("127.0.0.1", store_port)
    api = deployment.serve(
        workers=1,
        DUCKCAST_STORE_URL=f"tcp:127.0.0.1:{store_port}",
        DUCKCAST_HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
    )
    [master] = [p for p in children(api.pid) if is_gunicorn(p)]
    wait_until(lambda: len(children(master)) == 1, timeout=30)
    yield api, children(master)[0]


def connect(api: DuckcastProcess) -> socket.socket:
    assert api.port is not None
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset after a refusal counts as closed)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_oversized_heads_are_refused_at_once(worker: tuple[DuckcastProcess, int]) -> None:
    """100 connections each start a 16 MB header (or 200 header lines): each is answered 431
    and closed while the client is still sending, and the worker does not keep the bytes."""
    api, pid = worker
    before = rss_bytes(pid)
    for n in range(100):
        sock = connect(api)
        with sock:
            if n % 2:
                head = b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-A: 1\r\n" * 200 + b"\r\n"
                sock.sendall(head)
            else:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for _ in range(16 * 16):  # up to 16 MB in 64 KiB pieces
                        sock.sendall(b"a" * 65536)
            answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert rss_bytes(pid) - before < RSS_BOUND, (rss_bytes(pid) - before) / MiB
    with connect(api) as sock:  # the worker still serves
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 200 ")


def test_slow_and_silent_connections_are_closed_and_cost_little_memory(
    worker: tuple[DuckcastProcess, int],
) -> None:
    """100 slowloris connections (a head just under the size limit, never finished) and 100
    that connect and send nothing: the worker holds them within RSS_BOUND and closes every
    one once its head is HEAD_TIMEOUT late, while a normal request is still served."""
    api, pid = worker
    before = rss_bytes(pid)
    held: list[socket.socket] = []
    try:
        for n in range(200):
            sock = connect(api)
            held.append(sock)
            if n % 2 == 0:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 60_000)
        grown = rss_bytes(pid) - before
        assert grown < RSS_BOUND, f"{grown / MiB:.1f} MiB for 200 unfinished heads"
        with connect(api) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert read_all(sock).startswith(b"HTTP/1.1 200 ")
        for sock in held:  # (a socket still open after its 30 s timeout raises)
            assert read_all(sock) == b"", "an unfinished head got an answer"
    finally:
        for sock in held:
            sock.close()
    print(f"RSS +{grown / MiB:.1f} MiB with 200 unfinished heads held")
