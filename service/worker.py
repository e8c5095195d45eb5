"""The uvicorn settings Duckcast serves with, in one place: the gunicorn worker class
(`deploy/gunicorn.conf.py`) and embedded `duckcast serve` both use them."""

from __future__ import annotations

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker

UVICORN_OPTIONS: dict[str, Any] = {
    # permessage-deflate keeps a zlib context per WebSocket (hundreds of KB with 10k sockets)
    # and compresses every frame once per subscriber: the shared encoding would be lost.
    "ws_per_message_deflate": False,
    # Clients send nothing on /ws/items: no reason to accept 16 MiB messages.
    "ws_max_size": 64 * 1024,
}


class DuckcastWorker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {**UvicornWorker.CONFIG_KWARGS, **UVICORN_OPTIONS}
