"""`python -m loadtests.uvicorn_loop`: a worker's whole Python per request, uvicorn included,
without sockets: the service (or the bench's ceiling) behind the worker's own uvicorn protocol
(`service.worker`'s, with the Config a gunicorn worker makes, uvloop), fed one request at a
time on an in-memory transport; the embedded store in the same process, as in
`loadtests.inprocess`.

What it leaves out is the kernel's loopback and the event loop's socket reads and writes,
which the service and the ceiling pay alike. So `service - ceiling` is what the app adds per
request, which is what the bench's ratio is made of. Under `valgrind --tool=callgrind` the
instruction counts are deterministic (`--requests` twice, the difference divided by the
difference in requests: start-up cancels out), good for the before and after of a small change:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python -m loadtests.uvicorn_loop --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

BODY = orjson.dumps({"title": "hello", "priority": 3})


class Transport(asyncio.Transport):
    """Keeps what is written; reading is never paused for long here."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.last = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += 1
        self.last = bytes(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def serve(args: argparse.Namespace) -> None:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from service.config import Settings
    from service.worker import uvicorn_options

    # no store polls while counting (they run by the clock, and callgrind slows the clock's pace)
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp()) / "data",
        access_log=args.access_log,
        revocation_poll_ms=10_000,
    )
    token = b""
    if args.app == "ceiling":
        from loadtests.ceiling import app as ceiling

        app: Any = ceiling
        lifespan = None
    else:
        from service.api.app import create_app

        app = create_app(settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        user = await app.state.store.create_user("bench", "not-a-hash")
        token = app.state.signer.issue(user.id).value.encode()
        from service.pb import duckcast_pb2 as pb

        await app.state.store.create_items(user.id, [pb.ItemCreate(title="bench item")] * 3)
    # What uvicorn_worker.UvicornWorker gives uvicorn's Config under gunicorn's defaults
    config = Config(
        app=app,
        log_config=None,
        timeout_keep_alive=5,
        forwarded_allow_ips="127.0.0.1",
        backlog=2048,
        lifespan="off",
        **uvicorn_options(settings),
    )
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"Thu, 01 Jan 2026 00:00:00 GMT"), *config.encoded_headers]
    protocol = config.http_protocol_class(config=config, server_state=state, app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    head = [f"{args.method} {args.path} HTTP/1.1", "Host: 127.0.0.1:8000"]
    if token:
        head.append(f"Authorization: Bearer {token.decode()}")
    head.append(f"Accept: {args.accept}")
    body = BODY if args.method == "POST" else b""
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body

    async def one() -> None:
        protocol.data_received(request)
        for task in state.tasks:
            await task
            break

    for _ in range(200):  # warm: caches filled, children of the metrics made
        await one()
    status = transport.last.split(b" ", 2)[1]
    assert status in (b"200", b"201"), transport.last[:300]
    if args.show:
        print(transport.last.decode("latin-1"))
    profile = cProfile.Profile() if args.calls else None
    if profile is not None:
        profile.enable()
    started = time.process_time()
    for _ in range(args.requests):
        await one()
    spent = time.process_time() - started
    if profile is not None:
        profile.disable()
        stats = pstats.Stats(profile)
        print(f"{stats.total_calls / args.requests:.0f} calls/request")  # type: ignore[attr-defined]
        if args.calls > 1:
            stats.sort_stats("tottime").print_stats(args.calls)
            stats.dump_stats("/tmp/getitem-uvloop.prof")
    else:
        print(f"{spent / args.requests * 1e6:.1f} us CPU/request")
    if lifespan is not None:
        await lifespan.__aexit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", choices=("service", "ceiling"), default="service")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", default="/api/items/2")
    parser.add_argument("--accept", default="application/json")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false")
    parser.add_argument(
        "--calls", type=int, default=0, help="count Python calls (N > 1: and print the top N)"
    )
    parser.add_argument("--show", action="store_true", help="print the last answer")
    args = parser.parse_args()
    if args.access_log:
        from service.logging import configure

        # line-buffered, as stderr is when it is not a terminal
        sys.stderr = tempfile.TemporaryFile("w", buffering=1)  # noqa: SIM115 (until exit)
        configure("json", "INFO")
    uvloop.run(serve(args))
    os._exit(0)  # no atexit work in the counts


if __name__ == "__main__":
    main()
