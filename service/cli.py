"""duckcast: run the service (serve, store) or use one (register, login, logout, items, stats,
watch: service.client.cli)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service import gcpolicy, redaction
from service.client.cli import add_commands as add_client_commands
from service.config import Settings
from service.keys import Keys, SecretError, load_keys
from service.logging import configure as configure_logging


def _keys(settings: Settings) -> Keys:
    """The deployment's keys, or exit with what to configure (never the value itself)."""
    try:
        return load_keys(settings)
    except SecretError as exc:
        sys.exit(f"duckcast: {exc}")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("host", "port", "data_dir", "workers")
        if getattr(args, name, None) is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        sys.exit(f"duckcast: invalid settings:\n{exc}")
    configure_logging(settings.log_format, settings.log_level)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    keys = _keys(settings)
    if settings.workers == 1 and settings.store_url is None:
        import uvicorn

        from service.api.app import create_app
        from service.worker import uvicorn_options

        # uvicorn re-raises the signal that stopped it once it has shut down cleanly; with the
        # default disposition that would turn a graceful stop into "killed by SIGTERM".
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: None)
        # Embedded mode: one process, the store in-process, no Redis needed.
        app = create_app(settings, keys=keys)
        gcpolicy.settle(settings.gc_threshold)
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,  # configured above, like every other process (service.logging)
            timeout_graceful_shutdown=10,
            **uvicorn_options(settings),
        )
        return 0
    from service.supervisor import Supervisor

    return Supervisor(settings, keys).run()


def cmd_store(args: argparse.Namespace) -> int:
    settings = _settings(args)
    keys = _keys(settings)
    listen = args.listen or f"unix:{settings.data_dir.resolve() / 'store.sock'}"
    from service.store.process import run_store

    asyncio.run(run_store(settings, keys, listen, args.metrics_port))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duckcast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API (embedded store unless configured)")
    serve.add_argument("--host", help="bind address (DUCKCAST_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (DUCKCAST_PORT, default 8000)")
    serve.add_argument("--data-dir", type=Path, help="data directory (DUCKCAST_DATA_DIR, ./data)")
    serve.add_argument(
        "--workers",
        type=int,
        help="gunicorn workers; >1 starts the store process (DUCKCAST_WORKERS)",
    )
    serve.set_defaults(func=cmd_serve)

    store = sub.add_parser("store", help="run the store process that owns the DuckDB file")
    store.add_argument(
        "--listen", help="unix:PATH or tcp:HOST:PORT (default unix:DATA_DIR/store.sock)"
    )
    store.add_argument("--data-dir", type=Path, help="data directory (DUCKCAST_DATA_DIR, ./data)")
    store.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    store.set_defaults(func=cmd_store)

    add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Everything this process creates (database, secret, sockets, uploads) is the owner's
    # only; nothing here is meant for other local users.
    os.umask(0o077)
    redaction.install()
    # every process logs through one setup; `serve` and `store` apply their settings to it
    configure_logging()
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
