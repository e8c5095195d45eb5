"""Shutdown with streams open: an event stream never ends by itself, so the worker must end
them (uvicorn waits for open responses before it runs the lifespan shutdown)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.exceptions import ConnectionClosed

from tests.conftest import free_port
from tests.realtime.conftest import (
    TIMEOUT,
    Live,
    open_sse,
    recv,
    subscribed,
    ws_connect,
)
from tests.sse import EventStream

ROOT = Path(__file__).resolve().parents[2]


async def test_hub_close_ends_sse_and_closes_websocket_1012(live: Live) -> None:
    """hub.close() (what SIGTERM triggers) promptly ends an open SSE response (the client's
    iteration finishes cleanly) and closes an open WebSocket with 1012 "service restart", so
    clients reconnect elsewhere and uvicorn is not left waiting for them."""
    alice = await live.user("alice")
    async with (
        open_sse(live, headers=alice.headers) as sse,
        ws_connect(live, alice) as ws,
    ):
        await sse.expect("connected")
        await subscribed(live, 2)

        live.ring.close()

        async with asyncio.timeout(2):
            assert await sse.next() is None
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(2):
                await recv(ws)
        assert closed.value.rcvd is not None, "no close frame"
        assert closed.value.rcvd.code == 1012
    assert len(live.ring) == 0


async def test_sigterm_with_an_sse_client_exits_0_promptly_after_lifespan_shutdown(
    tmp_path: Path,
) -> None:
    """`duckcast serve` (embedded) with an SSE client connected: SIGTERM ends the stream, runs
    the lifespan shutdown ("Application shutdown complete") and the process exits with status
    0 within 5 s, without waiting out a graceful-shutdown timeout."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("DUCKCAST_") and k != "REDIS_URL"
    }
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "service.cli", "serve"],
            *["--port", str(port), "--data-dir", str(tmp_path / "data")],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:

            async def up() -> bool:
                try:
                    return (await http.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            async with asyncio.timeout(30):
                while not await up():
                    assert proc.returncode is None, log.read_text()
                    await asyncio.sleep(0.05)
            creds = {"username": "sigterm", "password": "correct horse"}
            assert (await http.post("/api/register", json=creds)).status_code == 201
            token = (await http.post("/api/login", json=creds)).json()["token"]

            headers = {"Authorization": f"Bearer {token}"}
            async with aconnect_sse(http, "GET", "/api/events", headers=headers) as source:
                assert source.response.status_code == 200
                sse = EventStream(source.response, TIMEOUT)
                await sse.expect("connected")

                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(5):
                    ended = await sse.next()
                assert ended is None, ended
            try:
                async with asyncio.timeout(5 - (time.monotonic() - started)):
                    rc = await proc.wait()
            except TimeoutError:
                pytest.fail(f"still running 5 s after SIGTERM:\n{log.read_text()}")
        output = log.read_text()
        assert "Application shutdown complete" in output, output
        assert "Traceback" not in output, output
        assert rc == 0, (
            f"exit status {rc} after SIGTERM (-15: killed by the re-raised signal)\n{output}"
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
