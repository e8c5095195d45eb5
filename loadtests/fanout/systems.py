"""The two systems under test, each started fresh with its own private redis-server.

- `Duckcast`: `duckcast serve --workers 2` with REDIS_URL, exactly as the README documents
  (store process + gunicorn), on a fresh data dir. `--duckcast PATH` picks the command, e.g. the
  `.venv/bin/duckcast` of another checkout. It runs from a scratch directory: gunicorn puts its
  working directory on sys.path, which would otherwise import this checkout's `service`.
- `Peer`: Socket.IO 4.8 + @socket.io/redis-adapter, two `node loadtests/peer/server.js`
  processes on two ports.

Both say how the writer reaches them, how subscribers split over their kinds and ports, which
processes are "the server" (for CPU and RSS; the private redis-server is one of them on both
sides), and the seq window of a run of writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import redis

from loadtests.fanout.nodes import PEER, node, peer_versions
from loadtests.fanout.stats import bucket
from loadtests.harness import (
    CannotRun,
    ProcessGroup,
    RedisServer,
    child_env,
    children,
    cmdline,
    descendants,
    free_port,
    login,
    wait_http,
)

PASSWORD = "fanout-password-123"
WHERE_IS_SERVICE = "import pathlib, service; print(pathlib.Path(service.__file__).parent)"
HOST = "127.0.0.1"


def default_duckcast() -> list[str]:
    script = Path(sys.executable).parent / "duckcast"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def describe_duckcast(cmd: list[str]) -> dict[str, str]:
    """Which checkout (and commit) the command runs: its Python's `service` package."""
    exe = Path(cmd[0])
    python = exe if exe.name.startswith("python") else exe.parent / "python"
    # from "/": `python -c` puts the working directory first on sys.path
    where = subprocess.run(
        [str(python), "-c", WHERE_IS_SERVICE], cwd="/", capture_output=True, text=True, timeout=60
    )
    if where.returncode != 0:
        raise CannotRun(f"{cmd[0]} has no importable `service`: {where.stderr[-300:]}")
    checkout = Path(where.stdout.strip()).parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=30
        )
        return done.stdout.strip()

    dirty = " (uncommitted changes)" if git("status", "--porcelain", "service") else ""
    return {
        "command": " ".join(cmd),
        "checkout": str(checkout),
        "commit": git("rev-parse", "--short", "HEAD") + dirty,
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
    }


class Duckcast:
    name = "duckcast"
    label = "Duckcast"
    resumable = True

    def __init__(self, cmd: list[str], workers: int = 2, trace: bool = False) -> None:
        self.cmd = cmd
        self.workers = workers
        self.token = ""
        self.trace_on = trace
        self.trace_dir: Path | None = None

    def start(self, workdir: Path, stack: ExitStack) -> None:
        self.redis = RedisServer(workdir, name="duckcast-redis")
        stack.callback(self.redis.stop)
        self.redis.start()
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        data = Path(tempfile.mkdtemp(prefix="fanout-data-", dir="/tmp"))
        stack.callback(shutil.rmtree, data, ignore_errors=True)
        run_dir = Path(tempfile.mkdtemp(prefix="fanout-cwd-", dir="/tmp"))
        stack.callback(shutil.rmtree, run_dir, ignore_errors=True)
        args = ["serve", "--workers", str(self.workers), "--port", str(self.port)]
        env = child_env(REDIS_URL=self.redis.url)
        if self.trace_on:
            self.trace_dir = workdir / f"trace-{self.port}"
            self.trace_dir.mkdir()
            env["DUCKCAST_FANOUT_TRACE"] = str(self.trace_dir)
        self.group = ProcessGroup(
            "duckcast serve",
            [*self.cmd, *args, "--data-dir", str(data)],
            env,
            workdir / f"duckcast-{self.port}.log",
            cwd=run_dir,
        )
        stack.callback(self.group.stop)
        self.wait_ready()
        self.token = login(self.base, f"fanout_{os.getpid()}_{time.time_ns()}", PASSWORD)
        if self.trace_on:
            self.tap = RedisTap(self.redis.url)
            stack.callback(self.tap.stop)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """/readyz answers 200 on fresh connections ten times running (so from every worker)
        and gunicorn has all its workers."""
        deadline = time.monotonic() + timeout
        wait_http(self.base + "/readyz", self.group, timeout)
        ok = 0
        while time.monotonic() < deadline:
            try:
                ok = ok + 1 if httpx.get(self.base + "/readyz", timeout=2).status_code == 200 else 0
            except httpx.HTTPError:
                ok = 0
            if ok >= 10 and len(self.worker_pids()) == self.workers:
                return
            time.sleep(0.05)
        raise CannotRun(f"duckcast not ready on every worker within {timeout:g}s")

    def trace(self) -> dict[str, list[dict[str, Any]]]:
        """The workers' cumulative trace histograms (service/realtime/ring.py `Trace`) by name;
        empty unless --trace (or when the checkout has no trace)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for path in sorted(self.trace_dir.glob("*.json")) if self.trace_dir else ():
            for name, h in json.loads(path.read_text()).items():
                found.setdefault(name, []).append(h)
        if found:
            found["redis"] = [self.tap.histogram()]
        return found

    def histograms(self) -> dict[str, dict[float, float]]:
        """--trace: cumulative bucket counts (upper bound in s -> count) of the server's own
        request-path histograms, from /metrics: POST /api/items as the worker timed it, the
        workers' store calls by op, and the store's commits."""
        if not self.trace_on:
            return {}
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.base + "/metrics", timeout=30.0).text
        out: dict[str, dict[float, float]] = {}
        wanted = {
            "duckcast_http_request_duration_seconds": lambda lb: (
                "http " + lb.get("route", "")
                if lb.get("method") == "POST" and lb.get("route") == "/api/items"
                else None
            ),
            "duckcast_store_request_duration_seconds": lambda lb: "store " + lb.get("op", ""),
            "duckcast_commit_duration_seconds": lambda lb: "commit",
        }
        for family in text_string_to_metric_families(text):
            name_of = wanted.get(family.name)
            if name_of is None:
                continue
            for sample in family.samples:
                if not sample.name.endswith("_bucket"):
                    continue
                name = name_of(sample.labels)
                if name:
                    le = float(sample.labels["le"])
                    out.setdefault(name, {})[le] = sample.value
        return out

    def worker_pids(self) -> list[int]:
        masters = [p for p in children(self.group.pid) if "gunicorn" in " ".join(cmdline(p))]
        return children(masters[0]) if masters else []

    def server_pids(self) -> list[int]:
        return [self.group.pid, *descendants(self.group.pid), self.redis.pid]

    def seq(self) -> int:
        r = httpx.get(
            self.base + "/api/items?limit=1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30.0,
        )
        if r.status_code != 200:
            raise CannotRun(f"GET /api/items answered {r.status_code}: {r.text[:300]}")
        return int(r.json()["seq"])

    def write_spec(self) -> dict[str, Any]:
        return {"system": "duckcast", "targets": [{"host": HOST, "port": self.port}]}

    def subscriptions(self, n: int) -> list[tuple[str, int, list[dict[str, Any]]]]:
        """Half SSE, half WebSocket ?format=json; gunicorn's workers share one port."""
        targets = [{"host": HOST, "port": self.port}]
        return [("sse", n - n // 2, targets), ("ws", n // 2, targets)]

    def window_after(self, lo: int, writes: dict[str, Any]) -> tuple[int, int]:
        """(hi, events expected by every subscriber) once the writes are acknowledged."""
        hi = self.seq()
        return hi, hi - lo

    def describe(self) -> dict[str, Any]:
        return describe_duckcast(self.cmd)


class RedisTap:
    """--trace: commit -> the event's message reaching a subscriber of the backplane's Redis
    (this process, on its own thread), per event, in stats.py's buckets. The signature is
    skipped, not checked: this only times the messages."""

    def __init__(self, url: str) -> None:
        from service.constants import EVENTS_CHANNEL

        self._pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(EVENTS_CHANNEL)
        self._buckets: dict[int, int] = {}
        self._n = 0
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from service.pb import store_pb2 as spb

        while self._running:
            msg = self._pubsub.get_message(timeout=0.2)
            if msg is None or msg["type"] != "message":
                continue
            now = time.time()
            try:
                # signed (service/backplane/signed.py): a version byte and a 32-byte MAC
                events = spb.EventBatch.FromString(msg["data"][33:]).events
            except Exception:  # not a batch: nothing to time
                continue
            with self._lock:
                for e in events:
                    stamp = e.item.updated_at
                    if stamp.seconds:
                        b = bucket((now - stamp.seconds - stamp.nanos / 1e9) * 1000)
                        self._buckets[b] = self._buckets.get(b, 0) + 1
                        self._n += 1

    def histogram(self) -> dict[str, Any]:
        with self._lock:
            return {"buckets": dict(self._buckets), "n": self._n, "max": None}

    def stop(self) -> None:
        self._running = False
        self._thread.join(2)


class Peer:
    name = "peer"
    label = "Socket.IO"
    resumable = False

    def __init__(self) -> None:
        self.token = ""
        self.next_seq = 1

    def start(self, workdir: Path, stack: ExitStack) -> None:
        self.redis = RedisServer(workdir, name="peer-redis")
        stack.callback(self.redis.stop)
        self.redis.start()
        self.ports = [free_port(), free_port()]
        while self.ports[0] == self.ports[1]:
            self.ports[1] = free_port()
        self.groups = []
        for i, port in enumerate(self.ports):
            group = ProcessGroup(
                f"peer{i}",
                [node(), str(PEER / "server.js"), "--port", str(port), "--redis", self.redis.url],
                child_env(),
                workdir / f"peer-{port}.log",
                cwd=PEER,
            )
            stack.callback(group.stop, 10.0)
            self.groups.append(group)
        for group, port in zip(self.groups, self.ports, strict=True):
            wait_http(f"http://{HOST}:{port}/readyz", group, 60)

    def server_pids(self) -> list[int]:
        return [g.pid for g in self.groups] + [self.redis.pid]

    def seq(self) -> int:
        return self.next_seq - 1

    def write_spec(self) -> dict[str, Any]:
        return {"system": "peer", "targets": [{"host": HOST, "port": p} for p in self.ports]}

    def subscriptions(self, n: int) -> list[tuple[str, int, list[dict[str, Any]]]]:
        """All Socket.IO (WebSocket transport), alternating over the two processes."""
        return [("sio", n, [{"host": HOST, "port": p} for p in self.ports])]

    def window_after(self, lo: int, writes: dict[str, Any]) -> tuple[int, int]:
        # The writer numbered the writes lo+1..lo+planned; a refused write is not emitted.
        self.next_seq = lo + writes["planned"] + 1
        return lo + writes["planned"], writes["ok"]

    def describe(self) -> dict[str, Any]:
        return {
            "command": f"2 x node loadtests/peer/server.js ({json.dumps(peer_versions())})",
            "versions": peer_versions(),
        }


System = Duckcast | Peer
