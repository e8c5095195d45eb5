"""`python -m loadtests.login_flood`: GET /api/items/{id} latency while a login flood runs.

A login costs an argon2 hash (~160 ms of CPU, 64 MiB). This measures what a flood of them does
to plain reads: it starts redis and `duckcast serve --workers 2` (as loadtests.bench does),
then, for each `--hash-threads` value (DUCKCAST_PASSWORD_HASH_THREADS), drives
`GET /api/items/{id}` with wrk (4 connections) alone and then beside a 50-connection flood of
correct logins (nothing throttles those), and prints the GET p50/p99 and the logins answered.
The flood uses correct passwords so that every request really hashes; wrong ones would be
throttled (429) after a few tries per address.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.bench import (
    PASSWORD,
    SCENARIOS,
    WRK_DIR,
    BenchError,
    Load,
    WrkResult,
    parse_wrk,
    prepare_service,
    require_tools,
    run_wrk,
    script_args,
)
from loadtests.harness import ProcessGroup, RedisServer, child_env, free_port, wait_http

GET_ITEM = next(s for s in SCENARIOS if s.name == "get_item")
JSON_BODY = {"Content-Type": "application/json"}


@dataclass
class Result:
    threads: int
    alone: WrkResult
    flooded: WrkResult
    logins: WrkResult


def flood(base_url: str, body: Path, seconds: float) -> subprocess.Popen[str]:
    script = str(WRK_DIR / "login.lua")
    cmd = ["wrk", "--latency", "-t", "2", "-c", "50", "-d", f"{seconds:g}s", "--timeout", "30s",
           "-s", script, base_url + "/api/login", "--", f"body={body}"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def measure(threads: int, seconds: float, workdir: Path, stack: ExitStack) -> Result:
    port = free_port()
    redis = RedisServer(workdir, name=f"redis-{threads}")
    stack.callback(redis.stop)
    redis.start()
    data = workdir / f"data-{threads}"
    env = child_env(
        REDIS_URL=redis.url,
        DUCKCAST_PASSWORD_HASH_THREADS=str(threads),
        DUCKCAST_SECRET_KEY="login-flood-" + "x" * 32,
    )
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "2",
           "--data-dir", str(data)]  # fmt: skip
    service = ProcessGroup(f"serve-{threads}", cmd, env, workdir / f"serve-{threads}.log")
    stack.callback(service.stop)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz", service)
    fx = prepare_service(base, 1000, workdir)
    creds = workdir / "login.json"
    creds.write_text(json.dumps({"username": "flood", "password": PASSWORD}))
    with httpx.Client(base_url=base, timeout=30) as client:
        r = client.post("/api/register", content=creds.read_bytes(), headers=JSON_BODY)
        if r.status_code != 201:
            raise BenchError(f"register answered {r.status_code}: {r.text[:200]}")
    reads = Load(threads=1, connections=4)
    args = script_args(GET_ITEM, "json", fx)
    alone = run_wrk(base, GET_ITEM, args, reads, seconds)
    flooding = flood(base, creds, seconds + 4)
    time.sleep(2)  # let the flood fill the hashing pools first
    flooded = run_wrk(base, GET_ITEM, args, reads, seconds)
    out, err = flooding.communicate(timeout=seconds + 60)
    if flooding.returncode != 0:
        raise BenchError(f"login flood failed: {err}")
    service.stop()
    redis.stop()
    return Result(threads, alone, flooded, parse_wrk(out))


def _p50_p99(results: list[WrkResult]) -> str:
    p50 = statistics.median(r.p50_ms for r in results)
    p99 = statistics.median(r.p99_ms for r in results)
    return f"{p50:.1f} / {p99:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.login_flood", description=__doc__)
    p.add_argument("--hash-threads", default="1,6", help="DUCKCAST_PASSWORD_HASH_THREADS values")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    require_tools()
    rows = []
    with tempfile.TemporaryDirectory(prefix="dc-flood-") as tmp, ExitStack() as stack:
        for threads in (int(t) for t in args.hash_threads.split(",")):
            runs = [measure(threads, args.seconds, Path(tmp), stack) for _ in range(args.repeat)]
            rows.append(runs)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
    print("| hash threads/worker | GET p50 / p99 alone | GET p50 / p99 under the flood "
          "| logins/s | login p99 | non-2xx logins |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for runs in rows:
        alone = _p50_p99([r.alone for r in runs])
        flooded = _p50_p99([r.flooded for r in runs])
        logins = [r.logins for r in runs]
        print(
            f"| {runs[0].threads} | {alone} | {flooded} "
            f"| {statistics.median(x.rps for x in logins):.1f} "
            f"| {statistics.median(x.p99_ms for x in logins):.0f} ms "
            f"| {statistics.median(x.non2xx for x in logins):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
