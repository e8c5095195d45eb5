"""`python -m loadtests.worker_creates`: a worker's CPU per create, without uvicorn or wrk.

The app (`create_app`) in this process, with a real `duckcast store` process and a private
Redis: `--concurrency` POST /api/items at a time straight through ASGI (coalesced into one
CreateMany, as a worker's concurrent requests are), its relay taking every event. Prints the
CPU per create of this process (app, store client, relay; not HTTP parsing or the kernel's)
and of the store process. `--settle` settles the collector after the warm-up as a server does
(service.gcpolicy); `--gc-stats` times the collections per create (gc.callbacks). For an
instruction count, run it under callgrind with two `--turns` and divide the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from loadtests.harness import ProcessGroup, RedisServer, child_env, wait_until


async def measure(args: argparse.Namespace, work: Path, redis_url: str, store_pid: int) -> None:
    from service.api.app import create_app
    from service.config import Settings
    from service.pb import duckcast_pb2 as pb

    data = work / "data"
    settings = Settings(data_dir=data, store_url=f"unix:{data}/store.sock", redis_url=redis_url)
    app = create_app(settings)
    if args.format == "json":
        body, media = orjson.dumps({"title": "bench item"}), b"application/json"
    else:
        body, media = pb.ItemCreate(title="bench item").SerializeToString(), b"application/protobuf"
    statuses: list[int] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> Any:
        return {"type": "http.request", "body": body, "more_body": False}

    async with app.router.lifespan_context(app):
        user = await app.state.store.create_user("bench", "not-a-hash")
        token = app.state.signer.issue(user.id).value.encode()
        headers = [
            (b"host", b"t"),
            (b"authorization", b"Bearer " + token),
            (b"accept", media),
            (b"content-type", media),
            (b"content-length", str(len(body)).encode()),
        ]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/api/items", "raw_path": b"/api/items", "query_string": b"",
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("t", 80),
        }  # fmt: skip

        async def turn() -> None:
            await asyncio.gather(
                *(app(dict(scope), receive, send) for _ in range(args.concurrency))
            )

        for _ in range(30):
            await turn()
        if args.settle:
            from service import gcpolicy

            gcpolicy.settle(10_000)
        collections: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
        began = [0.0]

        def timed(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                began[0] = time.process_time()
            else:
                spent = collections[info["generation"]]
                spent[0] += 1
                spent[1] += time.process_time() - began[0]

        if args.gc_stats:
            gc.callbacks.append(timed)
        store = psutil.Process(store_pid)
        mine, theirs = [], []
        creates = args.turns * args.concurrency
        for _ in range(args.rounds):
            statuses.clear()
            store_before, before = sum(store.cpu_times()[:2]), time.process_time()
            for _ in range(args.turns):
                await turn()
            mine.append((time.process_time() - before) / creates * 1e6)
            await asyncio.sleep(0.05)  # the store's outbox and this relay catch up
            theirs.append((sum(store.cpu_times()[:2]) - store_before) / creates * 1e6)
            assert set(statuses) == {201}, set(statuses)
        if args.gc_stats:
            gc.callbacks.remove(timed)
            n = creates * args.rounds
            shown = ", ".join(
                f"gen {g}: {c / n:.4f} collections, {t / n * 1e6:.1f} us"
                for g, (c, t) in collections.items()
            )
            print(f"gc per create: {shown}; {len(gc.get_objects())} tracked objects")
    print(
        f"worker in-process ({args.format}, {args.concurrency} at a time): CPU per create median"
        f" {statistics.median(mine):.1f} us (min {min(mine):.1f}); the store process"
        f" {statistics.median(theirs):.1f} us"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.worker_creates")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--turns", type=int, default=100, help="concurrent groups per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--format", choices=("json", "protobuf"), default="json")
    parser.add_argument("--settle", action="store_true", help="settle the collector first")
    parser.add_argument("--gc-stats", action="store_true", help="time collections per create")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="duckcast-worker-creates-"))
    redis = RedisServer(work)
    redis.start()
    data = work / "data"
    cmd = [sys.executable, "-m", "service.cli", "store", "--data-dir", str(data)]
    store = ProcessGroup("store", cmd, child_env(REDIS_URL=redis.url), work / "store.log")
    try:
        wait_until(lambda: (data / "store.sock").exists(), 60)
        time.sleep(0.5)  # the socket exists before the store listens on it
        asyncio.run(measure(args, work, redis.url, store.pid))
    finally:
        store.terminate()
        store.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
