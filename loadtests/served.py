"""The app served by uvicorn inside this process, with the production uvicorn options, for
the tools that look at streams from inside the server (`stream_latency`, `stream_memory`)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import uvicorn

from loadtests.harness import free_port
from service.api.app import create_app
from service.backplane.memory import MemoryBackplane
from service.config import Settings
from service.worker import uvicorn_options


class Served(NamedTuple):
    app: Any
    port: int
    user_id: int
    token: str


@asynccontextmanager
async def served(username: str) -> AsyncIterator[Served]:
    """An embedded store and an in-memory backplane on a fresh data dir, one user with a
    token; on exit the ring is closed (so held streams end) and uvicorn stops."""
    settings = Settings(data_dir=Path(tempfile.mkdtemp()) / "data", environment="development")
    app = create_app(settings, backplane=MemoryBackplane())
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="error", **uvicorn_options(settings)
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  (uvicorn's flag; it has no event)
        await asyncio.sleep(0.05)
    try:
        user = await app.state.store.create_user(username, "not-a-hash")
        yield Served(app, port, user.id, app.state.signer.issue(user.id).value)
    finally:
        app.state.ring.close()
        server.should_exit = True
        await serving
