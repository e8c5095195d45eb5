"""`python -m loadtests.store_writes`: the store alone, under concurrent single-item creates.

Starts a private redis-server and `duckcast store` (its own process, as under `serve
--workers N`) on a fresh data dir, registers a user through the store socket, then runs
`--writers` concurrent callers spread over `--connections` SocketStoreClients (a worker holds
one each) that create one item per call, for `--duration` seconds after a warm-up. Prints
creates/s, writes per group commit (from the store's own histogram) and the store's CPU time
per create, the figure a faster store moves whatever the load generator can keep up with.

`--duckcast PATH` runs the store from another checkout (e.g. `git worktree add /tmp/base
main`), so two versions are compared on the same machine: `--compare PATH` runs both,
interleaved, and prints them side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.harness import (
    ROOT,
    CannotRun,
    ProcessGroup,
    RedisServer,
    child_env,
    cpu_seconds,
    free_port,
    wait_until,
)
from service.keys import Keys
from service.pb import duckcast_pb2 as pb
from service.storeclient.socket import SocketStoreClient


@dataclass
class Result:
    label: str
    creates_per_s: float
    writes_per_commit: float
    store_us_per_create: float
    store_cpu_share: float  # of one core


def _scrape(port: int) -> tuple[float, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = re.search(r"^duckcast_commit_batch_size_sum (\S+)$", text, re.M)
    count = re.search(r"^duckcast_commit_batch_size_count (\S+)$", text, re.M)
    if total is None or count is None:
        raise CannotRun("the store's metrics have no duckcast_commit_batch_size")
    return float(total[1]), float(count[1])


async def _drive(
    url: str, key: bytes, writers: int, connections: int, warmup: float, duration: float
) -> tuple[int, float]:
    clients = [SocketStoreClient(url, key=key) for _ in range(connections)]
    try:
        user = await clients[0].create_user(f"bench-{secrets.token_hex(4)}", "not-a-hash")
        item = [pb.ItemCreate(title="a store benchmark item", description="x" * 40, priority=3)]
        counting = False
        done = 0
        stop = False

        async def writer(client: SocketStoreClient) -> None:
            nonlocal done
            while not stop:
                await client.create_items(user.id, item)
                if counting:
                    done += 1

        tasks = [asyncio.create_task(writer(clients[i % connections])) for i in range(writers)]
        await asyncio.sleep(warmup)
        counting = True
        started = time.perf_counter()
        await asyncio.sleep(duration)
        counted, elapsed = done, time.perf_counter() - started
        stop = True
        await asyncio.gather(*tasks)
        return counted, elapsed
    finally:
        for client in clients:
            await client.close()


def run_once(args: argparse.Namespace, checkout: Path, label: str, workdir: Path) -> Result:
    data = Path(tempfile.mkdtemp(prefix="dc-sw-", dir="/tmp"))
    secret = secrets.token_hex(32)
    metrics_port = free_port()
    sock = data / "store.sock"
    env = child_env(DUCKCAST_SECRET_KEY=secret, DUCKCAST_LOG_LEVEL="WARNING")
    if args.window_ms is not None:
        env["DUCKCAST_COMMIT_WINDOW_MS"] = str(args.window_ms)
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    env["PYTHONPATH"] = str(checkout)
    cmd = [sys.executable, "-m", "service.cli", "store", "--data-dir", str(data)]
    cmd += ["--listen", f"unix:{sock}", "--metrics-port", str(metrics_port)]
    store = ProcessGroup(f"store ({label})", cmd, env, workdir / f"store-{label}.log", cwd=checkout)
    try:
        wait_until(lambda: sock.exists() or not store.alive(), 60, 0.05)
        if not sock.exists() or not store.alive():
            raise CannotRun(f"the store did not start:\n{store.tail()}")
        key = Keys.from_secret(secret.encode()).store
        before = _scrape(metrics_port)
        cpu0 = cpu_seconds(store.pid)
        t0 = time.perf_counter()
        creates, elapsed = asyncio.run(
            _drive(f"unix:{sock}", key, args.writers, args.connections, args.warmup, args.duration)
        )
        # CPU over warm-up + run, per create over the same span (the warm-up's creates count)
        span = time.perf_counter() - t0
        cpu = cpu_seconds(store.pid) - cpu0
        after = _scrape(metrics_port)
        writes, commits = after[0] - before[0], after[1] - before[1]
        rate = creates / elapsed
        return Result(
            label,
            rate,
            writes / commits if commits else 0.0,
            cpu / writes * 1e6 if writes else 0.0,
            cpu / span,
        )
    finally:
        store.stop()
        shutil.rmtree(data, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.store_writes", description=__doc__)
    p.add_argument("--writers", type=int, default=64, help="concurrent create calls (64)")
    p.add_argument("--connections", type=int, default=2, help="store connections (2)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (5)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--window-ms", type=float, help="DUCKCAST_COMMIT_WINDOW_MS for the store")
    p.add_argument("--no-redis", action="store_true", help="no backplane (no outbox publishing)")
    p.add_argument("--duckcast", type=Path, default=ROOT, help="checkout the store runs from")
    p.add_argument("--compare", type=Path, help="a second checkout, run interleaved")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dc-sw-logs-", dir="/tmp"))
    redis = None if args.no_redis else RedisServer(workdir)
    targets = [("this", args.duckcast.resolve())]
    if args.compare:
        targets.insert(0, ("compare", args.compare.resolve()))
    results: dict[str, list[Result]] = {label: [] for label, _ in targets}
    try:
        if redis is not None:
            redis.start()
        args.redis_url = redis.url if redis is not None else None
        print(
            f"store_writes: {args.writers} writers on {args.connections} connections, "
            f"{args.duration:g}s runs, redis {'on' if redis else 'off'}, "
            f"load {os.getloadavg()[0]:.2f}"
        )
        for rep in range(args.repeats):
            order = targets if rep % 2 == 0 else list(reversed(targets))
            for label, checkout in order:
                r = run_once(args, checkout, label, workdir)
                results[label].append(r)
                print(
                    f"  {label:<8} rep {rep + 1}: {r.creates_per_s:8,.0f} creates/s  "
                    f"{r.writes_per_commit:6.1f} writes/commit  "
                    f"store {r.store_us_per_create:5.0f} us/create  "
                    f"({r.store_cpu_share:.0%} of a core)",
                    flush=True,
                )
    except CannotRun as exc:
        print(f"store_writes: {exc}", file=sys.stderr)
        return 2
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print("\nmedians:")
    for label, checkout in targets:
        rs = results[label]
        print(
            f"  {label:<8} {statistics.median(r.creates_per_s for r in rs):8,.0f} creates/s  "
            f"{statistics.median(r.writes_per_commit for r in rs):6.1f} writes/commit  "
            f"store {statistics.median(r.store_us_per_create for r in rs):5.0f} us/create"
            f"   ({checkout})"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
