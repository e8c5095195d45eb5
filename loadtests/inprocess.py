"""`python -m loadtests.inprocess`: CPU per request of the three hot requests, driven straight
through ASGI (no sockets, no HTTP parsing; the embedded store in the same process).

What the request path itself costs (routing, middleware, auth, negotiation, rendering), without
the noise of wrk, uvicorn and the store's socket that `make bench` measures around it: run it
in two checkouts to compare them. Prints the minimum and median over rounds of CPU time per
request (process time, so the store's threads count too). `--calls` also counts the Python
function calls per request (cProfile over 1,000 of each), a figure load does not move;
`--access-log` writes the access log as a worker does (JSON lines, to a temporary file).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.types import Message

from service.api.app import create_app
from service.config import Settings
from service.logging import configure

BODY = orjson.dumps({"title": "hello", "priority": 3})


async def measure(
    rounds: int, requests: int, access_log: bool, calls: dict[str, float] | None
) -> dict[str, list[float]]:
    data = Path(tempfile.mkdtemp()) / "data"
    app = create_app(Settings(data_dir=data, access_log=access_log))
    async with app.router.lifespan_context(app):
        user = await app.state.store.create_user("bench", "not-a-hash")
        token = app.state.signer.issue(user.id).value.encode()
        statuses: list[int] = []

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        def call(method: str, path: str, query: bytes = b"", body: bytes = b"") -> Awaitable[None]:
            headers = [(b"host", b"t"), (b"authorization", b"Bearer " + token)]
            if body:
                headers += [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]  # fmt: skip
            scope: dict[str, Any] = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                "query_string": query, "root_path": "", "headers": headers,
                "client": ("127.0.0.1", 1), "server": ("t", 80),
            }  # fmt: skip

            async def receive() -> Message:
                return {"type": "http.request", "body": body, "more_body": False}

            return app(scope, receive, send)

        await call("POST", "/api/items", body=BODY)
        cases: dict[str, tuple[Callable[[], Awaitable[None]], int]] = {
            "GET /api/items/{id}": (lambda: call("GET", "/api/items/1"), requests),
            "GET /api/items?limit=20": (lambda: call("GET", "/api/items", b"limit=20"), requests),
            "POST /api/items": (lambda: call("POST", "/api/items", body=BODY), requests // 20),
        }
        found: dict[str, list[float]] = {}
        for name, (request, count) in cases.items():
            for _ in range(rounds):
                statuses.clear()
                started = time.process_time()
                for _ in range(count):
                    await request()
                found.setdefault(name, []).append((time.process_time() - started) / count)
                assert set(statuses) <= {200, 201}, (name, set(statuses))
            if calls is not None:
                profile = cProfile.Profile()
                profile.enable()
                for _ in range(1000):
                    await request()
                profile.disable()
                calls[name] = pstats.Stats(profile).total_calls / 1000  # type: ignore[attr-defined]
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="per round (creates: 1/20)")
    parser.add_argument("--calls", action="store_true", help="count Python calls per request")
    parser.add_argument("--access-log", action="store_true", help="JSON access lines to a file")
    args = parser.parse_args()
    calls: dict[str, float] = {}
    if args.access_log:
        # line-buffered, as stderr is when it is not a terminal: a write per line
        sys.stderr = tempfile.TemporaryFile("w", buffering=1)  # noqa: SIM115 (until exit)
        configure("json", "INFO")
    found = asyncio.run(
        measure(args.rounds, args.requests, args.access_log, calls if args.calls else None)
    )
    for name, times in found.items():
        low, mid = min(times) * 1e6, statistics.median(times) * 1e6
        counted = f"  {calls[name]:5.0f} calls/request" if args.calls else ""
        print(f"{name:26} min {low:6.1f} us  median {mid:6.1f} us CPU/request{counted}")


if __name__ == "__main__":
    main()
