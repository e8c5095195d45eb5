"""service/worker.py's protocol sends a response's head with its body, in one write: served by
a real uvicorn with that protocol, its transport recording each write."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from service.config import Settings
from service.worker import http_protocol
from tests.realtime.conftest import serve


class Recording:
    """The connection's real transport, noting the size of each write."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _exchange(port: int, request: bytes, until: bytes, times: int = 1) -> bytes:
    """Send `request` on one connection; read until `until` has been seen `times` times."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        got = b""
        async with asyncio.timeout(10):
            while got.count(until) < times:
                chunk = await reader.read(65536)
                assert chunk, got
                got += chunk
        return got
    finally:
        writer.close()


async def test_a_response_head_leaves_with_its_body(tmp_path: Path) -> None:
    """GET: one write per response (head and body), for each request of a keep-alive
    connection, and then the transport itself again for the response's cycle; HEAD, which
    has no body to wait for: the head alone, by the end of the same turn of the event loop."""
    settings = Settings(data_dir=tmp_path / "d")
    writes: list[bytes] = []
    connections: list[Any] = []

    class Recorded(http_protocol(settings)):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            connections.append(self)
            super().connection_made(Recording(transport, writes))  # type: ignore[arg-type]

    async with serve(settings, http=Recorded) as live:
        get = b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n"
        got = await _exchange(live.port, get * 2, b'{"status":"ok"}', times=2)
        assert got.count(b"HTTP/1.1 200 OK") == 2
        assert len(writes) == 2, writes
        for write in writes:
            assert write.startswith(b"HTTP/1.1 200") and write.endswith(b'{"status":"ok"}')
        # once the head is out, the cycle writes to the transport itself (a stream's events)
        assert isinstance(connections[0].cycle.transport, Recording)
        writes.clear()
        head = b"HEAD /healthz HTTP/1.1\r\nhost: t\r\n\r\n"
        got = await _exchange(live.port, head, b"\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 ") and got.endswith(b"\r\n\r\n") and len(writes) == 1
