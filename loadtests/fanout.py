"""`python -m loadtests.fanout`: change-event fan-out under load, and the memory of idle streams.

Everything runs on loopback, on this machine:

1. a private `redis-server` on a free port (`--save "" --appendonly no`) and
   `duckcast serve --workers 2` on a fresh data dir in /tmp (own process groups; /readyz
   polled; SIGTERM then SIGKILL on the way out, on error and Ctrl-C too). The open-files
   limit is raised to the hard limit for this process and its children.
2. Fan-out phase: `--subscribers` (default 1,000) subscribers, half SSE `GET /api/events`,
   half WebSocket `/ws/items` (protobuf binary frames), all with `?token=`, held by `--clients`
   subscriber processes (loadtests/fanout_client.py: raw asyncio protocols on uvloop). A writer
   drives `--rate` POST /api/items per second for `--duration` seconds over one keep-alive
   httpx client. Each subscriber records every event's seq and receive time; commit-to-receipt
   latency = receive time - the item's `created_at` (both `time.time()` on this machine).
   The phase runs `--repeat` times (3; --quick 1), each on a fresh service; the report gives
   the medians and every run's p50/p99. Rates are over the planned duration or, when the
   service falls behind, until the last ack / last receipt. CPU per delivery (worker CPU
   seconds / deliveries) is printed too: unlike the rates it hardly depends on how busy this
   shared machine is.
3. Idle phase (`--idle N`, 0 to skip): a fresh service, N subscribers (SSE first, then
   WebSocket, RSS measured after each), held `--idle-hold` seconds with no writes.
   `--ws-deflate` makes the WebSocket clients offer permessage-deflate, as browsers do.

RSS per connection = (sum of VmRSS of the gunicorn workers after opening - before) / opened,
the workers found as the gunicorn master's children in /proc. Results are printed against
the issue's targets and written to loadtests/results/fanout-<timestamp>.json.
`--profile S` samples both API workers with py-spy for S seconds during the writes and
prints the top frames.

Exit status: 0 when every target is met, 1 when one is missed, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpcore._synchronization
import httpx

from loadtests import fanout_client

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "loadtests" / "results"
PASSWORD = "fanout-password-123"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The targets.
TARGET_P99_MS = 100.0
TARGET_KB_PER_CONN = 20.0
CENTRIFUGO_KB_PER_CONN = 27.0


if importlib.util.find_spec("sniffio") is None:
    # httpcore tries `import sniffio` on every lock/event set-up and Python does not cache a
    # failed import (anyio >= 4.11 no longer pulls sniffio in): ~17% of the writer's CPU went
    # to searching sys.path for it (encode/httpcore#1103). This process only runs asyncio.
    httpcore._synchronization.current_async_library = lambda: "asyncio"


class FanoutError(Exception):
    """The run could not happen (as opposed to: it ran and missed a target)."""


def log(msg: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------------


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessGroup:
    """A child in its own session/process group, so teardown reaches all it started."""

    def __init__(self, name: str, cmd: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log = log_path
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                list(cmd),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=raise_nofile,  # no threads here yet
            )
        self.pgid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 30.0) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            log(f"{self.name}: still running after {grace:g}s; killing")
        with suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError):
            found.extend(int(p) for p in (task / "children").read_text().split())
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def vmrss_kb(pid: int) -> int:
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def socket_fds(pid: int) -> int:
    n = 0
    with suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with suppress(OSError):
                if os.readlink(fd.path).startswith("socket:"):
                    n += 1
    return n


def wait_redis(port: int, group: ProcessGroup, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group.alive():
            raise FanoutError(f"redis-server exited early:\n{group.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise FanoutError(f"redis-server did not answer PING within {timeout:g}s")


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PROMETHEUS_MULTIPROC_DIR", "DUCKCAST_STORE_URL", "DUCKCAST_WORKERS"):
        env.pop(name, None)
    env.update(extra)
    return env


class Service:
    """`duckcast serve --workers 2` with a private data dir."""

    def __init__(self, redis_url: str, workers: int, workdir: Path, stack: ExitStack) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="duckcast-fanout-", dir="/tmp"))
        stack.callback(shutil.rmtree, self.data_dir, ignore_errors=True)
        cmd = [
            sys.executable, "-m", "service.cli", "serve",
            "--workers", str(workers), "--port", str(self.port),
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        self.group = ProcessGroup(
            "duckcast", cmd, child_env(REDIS_URL=redis_url), workdir / f"serve-{self.port}.log"
        )
        stack.callback(self.group.stop)
        self.workers_expected = workers

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        ok = 0
        while time.monotonic() < deadline:
            if not self.group.alive():
                raise FanoutError(
                    f"the service exited with {self.group.proc.returncode}:\n{self.group.tail()}"
                )
            try:
                # A new connection per poll, so the answers come from every worker.
                r = httpx.get(self.base + "/readyz", timeout=2.0)
                if r.status_code == 200:
                    ok += 1
                    if ok >= 10 and len(self.workers()) == self.workers_expected:
                        return
                    continue
                ok = 0
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                ok = 0
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise FanoutError(f"service not ready within {timeout:g}s ({last})\n{self.group.tail()}")

    def pids(self) -> dict[str, Any]:
        """The supervisor's children: the store and the gunicorn master (and its workers)."""
        found: dict[str, Any] = {"supervisor": self.group.proc.pid, "store": None, "master": None}
        for pid in children(self.group.proc.pid):
            line = cmdline(pid)
            if "gunicorn" in line:
                found["master"] = pid
            elif "service.cli store" in line:
                found["store"] = pid
        return found

    def workers(self) -> list[int]:
        master = self.pids()["master"]
        return sorted(children(master)) if master else []

    def worker_rss_kb(self) -> dict[int, int]:
        return {pid: vmrss_kb(pid) for pid in self.workers()}

    def worker_sockets(self) -> dict[int, int]:
        return {pid: socket_fds(pid) for pid in self.workers()}

    def cpu(self) -> dict[str, float]:
        p = self.pids()
        out = {f"worker{i}": cpu_seconds(w) for i, w in enumerate(self.workers())}
        if p["store"]:
            out["store"] = cpu_seconds(p["store"])
        if p["master"]:
            out["master"] = cpu_seconds(p["master"])
        return out

    def login(self) -> str:
        username = f"fanout_{os.getpid()}_{int(time.time())}"
        creds = {"username": username, "password": PASSWORD}
        with httpx.Client(base_url=self.base, timeout=30.0) as c:
            r = c.post("/api/register", json=creds)
            if r.status_code != 201:
                raise FanoutError(f"register answered {r.status_code}: {r.text[:300]}")
            r = c.post("/api/login", json=creds)
            if r.status_code != 200:
                raise FanoutError(f"login answered {r.status_code}: {r.text[:300]}")
            return str(r.json()["token"])

    def current_seq(self, token: str) -> int:
        r = httpx.get(
            self.base + "/api/items?limit=1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
        )
        r.raise_for_status()
        return int(r.json()["seq"])


# -- subscriber processes -------------------------------------------------------------------


class Clients:
    def __init__(
        self, n: int, port: int, token: str, stack: ExitStack, deflate: bool = False
    ) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[mp.process.BaseProcess] = []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=fanout_client.main,
                args=(child, "127.0.0.1", port, token, f"client{i}"),
                name=f"fanout-client{i}",
                daemon=True,
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        stack.callback(self.stop)
        if deflate:
            self.ask_all("deflate", True, 60)

    def ask(self, messages: Sequence[tuple[str, Any]], timeout: float) -> list[Any]:
        for conn, msg in zip(self.conns, messages, strict=True):
            conn.send(msg)
        answers = []
        deadline = time.monotonic() + timeout
        for conn, proc in zip(self.conns, self.procs, strict=True):
            while not conn.poll(0.2):
                if not proc.is_alive():
                    raise FanoutError(f"{proc.name} died (exit {proc.exitcode})")
                if time.monotonic() > deadline:
                    raise FanoutError(f"{proc.name} did not answer {messages[0][0]!r} in time")
            try:
                answers.append(conn.recv()[1])
            except (EOFError, OSError) as exc:
                raise FanoutError(f"{proc.name} broke the pipe: {exc!r}") from exc
        return answers

    def ask_all(self, cmd: str, arg: Any, timeout: float) -> list[Any]:
        return self.ask([(cmd, arg)] * len(self.conns), timeout)

    def open(self, sse: int, ws: int, concurrency: int, timeout: float) -> list[dict[str, Any]]:
        n = len(self.conns)
        msgs = [
            (
                "open",
                {
                    "sse": sse // n + (i < sse % n),
                    "ws": ws // n + (i < ws % n),
                    "concurrency": concurrency,
                    "limit": timeout,
                },
            )
            for i in range(n)
        ]
        # Bounded: every connection has its own timeout; allow for the queue behind it.
        budget = timeout * (1 + (sse + ws) / max(1, concurrency * n)) + 60
        return self.ask(msgs, budget)

    def stop(self) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if proc.is_alive():
                with suppress(OSError, BrokenPipeError):
                    conn.send(("close", None))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.conns, self.procs = [], []


def merge_open(answers: list[dict[str, Any]]) -> dict[str, Any]:
    failures: collections.Counter[str] = collections.Counter()
    closed: collections.Counter[str] = collections.Counter()
    for a in answers:
        failures.update(a.get("failures", {}))
        closed.update(a.get("closed", {}))
    return {
        "held": sum(a["held"] for a in answers),
        "open": sum(a["open"] for a in answers),
        "open_sse": sum(a["open_sse"] for a in answers),
        "open_ws": sum(a["open_ws"] for a in answers),
        "ws_deflate": sum(a.get("ws_deflate", 0) for a in answers),
        "failed": sum(a["failed"] for a in answers),
        "failures": dict(failures),
        "closed": dict(closed),
        "seconds": max((a.get("seconds", 0.0) for a in answers), default=0.0),
        "client_maxrss_kb": [a["maxrss_kb"] for a in answers],
    }


# -- the writer -----------------------------------------------------------------------------


async def write_load(
    base: str, token: str, rate: float, duration: float, senders: int
) -> dict[str, Any]:
    """POST /api/items at a steady `rate` (open loop) for `duration` seconds.

    One keep-alive httpx client whose pool holds exactly `senders` connections, each driven by
    one sender task taking writes off a queue in schedule order. (Letting every write be its
    own task on a shared pool makes httpx's pool itself the bottleneck: it added 20-1000 ms
    per request here at 100/s, encode/httpx#3215.) `ack` = response time - scheduled time, so
    a write that waited for a free sender counts its wait. `senders` bounds the writes in
    flight: when rate x request latency exceeds it (the service is saturated), writes queue
    here and the achieved rate, reported as events/s written, drops below --rate. (More
    senders only moved the queue into the server and cost this process 0.3-0.4 cores.)"""
    n = max(1, round(rate * duration))
    acks: list[float] = []
    service: list[float] = []
    commit_to_ack: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    headers = {"Authorization": f"Bearer {token}"}
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=10.0
    ) as client:

        async def sender() -> None:
            while (job := await queue.get()) is not None:
                i, scheduled = job
                body = {"title": f"fanout {i}", "description": "loadtests.fanout"}
                sent = time.time()
                try:
                    r = await client.post("/api/items", json=body)
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                done = time.time()
                if r.status_code != 201:
                    errors[f"HTTP {r.status_code}"] += 1
                    continue
                acks.append(done - scheduled)
                service.append(done - sent)
                created = datetime.fromisoformat(r.json()["created_at"]).timestamp()
                commit_to_ack.append(done - created)

        # Warm the pool: every sender's connection open before the clock starts.
        await asyncio.gather(*(client.get("/api/me") for _ in range(senders)))
        tasks = [asyncio.create_task(sender()) for _ in range(senders)]
        t0 = time.monotonic()
        wall0 = time.time()
        for i in range(n):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((i, wall0 + i / rate))
        sent_for = time.monotonic() - t0
        backlog = queue.qsize()
        for _ in tasks:
            queue.put_nowait(None)
        _, pending = await asyncio.wait(tasks, timeout=30.0)
        for t in pending:
            t.cancel()
            errors["sender still busy 30 s after the last write"] += 1
        elapsed = time.monotonic() - t0
    return {
        "planned": n,
        "ok": len(acks),
        "errors": dict(errors),
        "senders": senders,
        "send_seconds": sent_for,
        "queued_at_end": backlog,
        "seconds": elapsed,
        "started_at": wall0,
        "last_ack_at": wall0 + elapsed,
        "ack_ms": summarize_ms(acks),
        "request_ms": summarize_ms(service),
        "commit_to_ack_ms": summarize_ms(commit_to_ack),
    }


# -- statistics -----------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def summarize_ms(values: Sequence[float]) -> dict[str, float]:
    s = sorted(values)
    if not s:
        return {"n": 0}
    return {
        "n": len(s),
        "p50": percentile(s, 50) * 1000,
        "p95": percentile(s, 95) * 1000,
        "p99": percentile(s, 99) * 1000,
        "max": s[-1] * 1000,
    }


# -- profiling ------------------------------------------------------------------------------


def start_profiles(pids: list[int], seconds: float, workdir: Path) -> list[tuple[int, Path, Any]]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        log("py-spy not found: `pip install py-spy` into the venv to profile")
        return []
    started = []
    for pid in pids:
        out = workdir / f"pyspy-{pid}.txt"
        cmd = [
            spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
            "--format", "raw", "--rate", "100", "--nonblocking", "--gil", "--output", str(out),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append((pid, out, proc))
    return started


def finish_profiles(started: list[tuple[int, Path, Any]], seconds: float) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for pid, out, proc in started:
        try:
            _, err = proc.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not out.exists():
            report[str(pid)] = {"error": err.decode(errors="replace")[-500:]}
            continue
        self_t: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        total = 0
        for line in out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [function(f) for f in stack.split(";")]
            self_t[frames[-1]] += n
            for f in set(frames):
                incl[f] += n
        report[str(pid)] = {
            "samples": total,
            "gil_share": total / (seconds * 100),
            "self": self_t.most_common(30),
            # below the common trunk (gunicorn -> uvicorn -> the middleware stack)
            "inclusive": [(f, n) for f, n in incl.most_common() if n < 0.5 * total][:30],
            "ours": [(f, n) for f, n in incl.most_common() if "(service/" in f][:15],
            "raw": str(out),
        }
    return report


def function(frame: str) -> str:
    """`name (path:line)` -> `name (path)`: one entry per function."""
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path})"


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose p99 is the median, with every scalar figure replaced by its median over
    the runs (losses and duplicates summed: one lost event in any run is a miss)."""
    if len(runs) == 1:
        return runs[0]
    by_p99 = sorted(runs, key=lambda r: r["latency_ms"].get("p99", float("inf")))
    out = dict(by_p99[len(by_p99) // 2])

    def med(get: Any) -> float:
        return float(statistics.median(get(r) for r in runs))

    out["latency_ms"] = {
        k: med(lambda r, k=k: r["latency_ms"].get(k, float("nan")))
        for k in ("p50", "p95", "p99", "max")
    }
    for k in ("events_per_s", "deliveries_per_s"):
        out[k] = med(lambda r, k=k: r[k])
    for k in ("lost", "duplicated", "out_of_order", "lost_counting_from_seq_before"):
        out[k] = sum(r[k] for r in runs)
    out["rss_kb"] = dict(out["rss_kb"])
    for k in ("per_conn_connected", "per_conn_after_load"):
        out["rss_kb"][k] = med(lambda r, k=k: r["rss_kb"][k])
    out["cpu_us_per_delivery"] = {
        k: med(lambda r, k=k: r["cpu_us_per_delivery"][k]) for k in out["cpu_us_per_delivery"]
    }
    out["cpu_cores_during_writes"] = {
        k: med(lambda r, k=k: r["cpu_cores_during_writes"].get(k, 0.0))
        for k in out["cpu_cores_during_writes"]
    }
    out["runs"] = [
        {
            "p50": r["latency_ms"].get("p50"),
            "p99": r["latency_ms"].get("p99"),
            "deliveries_per_s": r["deliveries_per_s"],
            "lost": r["lost"],
            "closed": r["closed_during_run"],
        }
        for r in runs
    ]
    return out


# -- phases ---------------------------------------------------------------------------------


def start_redis(workdir: Path, stack: ExitStack) -> tuple[str, int]:
    if shutil.which("redis-server") is None:
        raise FanoutError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    cmd = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--dir", str(workdir),
    ]  # fmt: skip
    group = ProcessGroup("redis", cmd, child_env(), workdir / "redis.log")
    stack.callback(group.stop, 10)
    wait_redis(port, group)
    return f"redis://127.0.0.1:{port}/0", group.proc.pid


def settle_rss(svc: Service, seconds: float = 2.0) -> dict[int, int]:
    time.sleep(seconds)
    return svc.worker_rss_kb()


def warm_up(clients: Clients) -> None:
    """A few subscriptions of each kind, then closed, so lazy imports and first-use caches
    are in the baseline rather than counted against the connections."""
    clients.open(sse=8, ws=8, concurrency=8, timeout=15)
    clients.ask_all("reset", None, 30)


def fanout_phase(
    args: argparse.Namespace, redis_url: str, redis_pid: int, workdir: Path
) -> dict[str, Any]:
    with ExitStack() as stack:
        svc = Service(redis_url, args.workers, workdir, stack)
        svc.wait_ready()
        token = svc.login()
        workers = svc.workers()
        log(f"service up on :{svc.port}, workers {workers}, store {svc.pids()['store']}")
        clients = Clients(args.clients, svc.port, token, stack, args.ws_deflate)
        warm_up(clients)
        base_rss = settle_rss(svc)
        base_socks = svc.worker_sockets()

        n_ws = round(args.subscribers * args.ws_fraction)
        n_sse = args.subscribers - n_ws
        log(f"opening {n_sse} SSE + {n_ws} WebSocket subscribers over {args.clients} processes")
        opened = merge_open(clients.open(n_sse, n_ws, args.connect_concurrency, 15))
        log(f"open: {opened['open']} held, {opened['failed']} failed in {opened['seconds']:.1f}s")
        if opened["open"] == 0:
            raise FanoutError(f"no subscriber could connect: {opened['failures']}")
        conn_rss = settle_rss(svc)
        socks = svc.worker_sockets()
        per_worker = {str(p): socks.get(p, 0) - base_socks.get(p, 0) for p in socks}

        seq0 = svc.current_seq(token)
        client_cpu0 = [a["cpu_seconds"] for a in clients.ask_all("status", None, 30)]
        cpu0 = {**svc.cpu(), "redis": cpu_seconds(redis_pid), "writer": time.process_time()}
        busy0, wall0 = machine_busy_seconds(), time.monotonic()
        profiles = []
        if args.profile > 0:
            prof_s = min(args.profile, max(1.0, args.duration - 2))
            profiles = start_profiles(workers, prof_s, workdir)
            log(f"py-spy sampling workers {workers} for {prof_s:g}s")
        log(f"writing {args.rate:g}/s for {args.duration:g}s (seq before: {seq0})")
        senders = args.senders
        writes = asyncio.run(write_load(svc.base, token, args.rate, args.duration, senders))
        cpu1 = {**svc.cpu(), "redis": cpu_seconds(redis_pid), "writer": time.process_time()}
        busy1, wall1 = machine_busy_seconds(), time.monotonic()
        client_cpu1 = [a["cpu_seconds"] for a in clients.ask_all("status", None, 30)]
        cores = {k: (cpu1.get(k, 0.0) - v) / (wall1 - wall0) for k, v in cpu0.items()}
        for i, (a, b) in enumerate(zip(client_cpu0, client_cpu1, strict=True)):
            cores[f"client{i}"] = (b - a) / (wall1 - wall0)
        cores["others"] = max(0.0, (busy1 - busy0) / (wall1 - wall0) - sum(cores.values()))
        final_seq = svc.current_seq(token)
        log(f"writes: {writes['ok']} ok, errors {writes['errors']}; final seq {final_seq}")
        drained = clients.ask_all(
            "drain",
            {"start_seq": seq0, "final_seq": final_seq, "limit": args.drain},
            args.drain + 120,
        )
        cpu2 = svc.cpu()
        client_cpu2 = [a["cpu_seconds"] for a in drained]
        profile = finish_profiles(profiles, args.profile) if profiles else {}
        load_rss = svc.worker_rss_kb()

        lat = array("d")
        per_sub: list[dict[str, Any]] = []
        missing_commit = 0
        for a in drained:
            chunk = array("d")
            chunk.frombytes(a.pop("latencies"))
            lat.extend(chunk)
            per_sub.extend(a.pop("per_sub"))
            missing_commit += a["missing_commit"]
        lat_sorted = sorted(lat)
        delivered = sum(s["received"] for s in per_sub)
        lost = sum(s["lost"] or 0 for s in per_sub)
        dups = sum(s["dups"] for s in per_sub)
        ooo = sum(s["out_of_order"] for s in per_sub)
        silent = sum(1 for s in per_sub if s["received"] == 0)
        late_start = sum(1 for s in per_sub if s["first"] is not None and s["first"] > seq0 + 1)
        closed = collections.Counter(s["closed"] for s in per_sub if s["closed"])
        # what a subscriber should have had if it had been there from seq0 on
        lost_from_seq0 = sum(s["lost_from_start"] for s in per_sub)
        # CPU per delivery does not depend on how busy the machine is (the rates above do):
        # worker CPU over writes + drain (it includes the POSTs, ~1 per 1,000 deliveries).
        worker_cpu = sum(cpu2[k] - cpu0[k] for k in cpu2 if k.startswith("worker"))
        client_cpu = sum(b - a for a, b in zip(client_cpu0, client_cpu2, strict=True))
        per_delivery_us = {
            "workers": worker_cpu / max(1, delivered) * 1e6,
            "clients": client_cpu / max(1, delivered) * 1e6,
            "store_per_write": (cpu2.get("store", 0) - cpu0.get("store", 0))
            / max(1, writes["ok"])
            * 1e6,
        }
        by_kind: dict[str, Any] = {}
        for kind in ("sse", "ws"):
            subs = [s for s in per_sub if s["kind"] == kind]
            by_kind[kind] = {
                "subscribers": len(subs),
                "delivered": sum(s["received"] for s in subs),
                "lost": sum(s["lost"] or 0 for s in subs),
                "closed": dict(collections.Counter(s["closed"] for s in subs if s["closed"])),
            }
        n_conn = opened["open"]
        # If the service keeps up these are the planned duration; if it falls behind, the
        # time until the last ack / the last receipt (so the rate is not flattered).
        write_span = max(args.duration, writes["seconds"])
        last_receipt = max(a["last_receipt"] for a in drained)
        delivery_span = max(args.duration, last_receipt - writes["started_at"])
        events = final_seq - seq0
        return {
            "subscribers": {"requested": args.subscribers, "sse": n_sse, "ws": n_ws, **opened},
            "connections_per_worker": per_worker,
            "writes": writes,
            "seq_before": seq0,
            "seq_after": final_seq,
            "events": events,
            "events_per_s": writes["ok"] / write_span,
            "write_span_s": write_span,
            "delivered": delivered,
            "deliveries_per_s": delivered / delivery_span,
            "delivery_span_s": delivery_span,
            "expected_deliveries": events * n_conn,
            "latency_ms": summarize_ms(lat_sorted),
            "latency_samples_without_commit_time": missing_commit,
            "lost": lost,
            "lost_counting_from_seq_before": lost_from_seq0,
            "duplicated": dups,
            "out_of_order": ooo,
            "subscribers_that_received_nothing": silent,
            "subscribers_first_seq_after_start": late_start,
            "closed_during_run": dict(closed),
            "by_kind": by_kind,
            "rss_kb": {
                "before": base_rss,
                "connected": conn_rss,
                "after_load": load_rss,
                "per_conn_connected": (sum(conn_rss.values()) - sum(base_rss.values()))
                / max(1, n_conn),
                "per_conn_after_load": (sum(load_rss.values()) - sum(base_rss.values()))
                / max(1, n_conn),
            },
            "cpu_cores_during_writes": cores,
            "cpu_us_per_delivery": per_delivery_us,
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "profile": profile,
        }


def idle_phase(args: argparse.Namespace, redis_url: str, workdir: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        svc = Service(redis_url, args.workers, workdir, stack)
        svc.wait_ready()
        token = svc.login()
        log(f"idle phase: fresh service on :{svc.port}, workers {svc.workers()}")
        clients = Clients(args.clients, svc.port, token, stack, args.ws_deflate)
        warm_up(clients)
        base = settle_rss(svc)
        base_socks = svc.worker_sockets()
        n_ws = round(args.idle * args.idle_ws_fraction)
        n_sse = args.idle - n_ws
        steps: list[dict[str, Any]] = []
        rss_prev = base
        held_prev = 0
        failed_prev: collections.Counter[str] = collections.Counter()
        for kind, n in (("sse", n_sse), ("ws", n_ws)):
            if n == 0:
                continue
            log(f"opening {n} idle {kind} subscribers")
            opened = merge_open(
                clients.open(
                    n if kind == "sse" else 0,
                    n if kind == "ws" else 0,
                    args.connect_concurrency,
                    30,
                )
            )
            status = merge_open(clients.ask_all("status", None, 30))
            rss = settle_rss(svc, 3.0)
            held = status["open"]
            if held == held_prev:
                raise FanoutError(f"no {kind} subscriber could connect: {opened['failures']}")
            failures = collections.Counter(opened["failures"])
            failures.subtract(failed_prev)
            failed_prev.update(failures)
            failures = +failures
            steps.append(
                {
                    "kind": kind,
                    "requested": n,
                    "opened": held - held_prev,
                    "failed": sum(failures.values()),
                    "failures": dict(failures),
                    "connect_seconds": opened["seconds"],
                    "rss_kb": rss,
                    "kb_per_conn": (sum(rss.values()) - sum(rss_prev.values()))
                    / max(1, held - held_prev),
                }
            )
            log(f"  {held - held_prev} opened, {sum(failures.values())} failed; RSS {rss}")
            rss_prev, held_prev = rss, held
        log(f"holding {held_prev} idle subscribers for {args.idle_hold:g}s")
        time.sleep(args.idle_hold)
        status = merge_open(clients.ask_all("status", None, 60))
        hold_rss = svc.worker_rss_kb()
        socks = svc.worker_sockets()
        n_conn = held_prev
        return {
            "requested": args.idle,
            "sse": n_sse,
            "ws": n_ws,
            "held_after_hold": status["open"],
            "ws_deflate_negotiated": status["ws_deflate"],
            "closed_during_hold": status["closed"],
            "failed": sum(s["failed"] for s in steps),
            "failures": {k: v for s in steps for k, v in s["failures"].items()},
            "connections_per_worker": {
                str(p): socks.get(p, 0) - base_socks.get(p, 0) for p in socks
            },
            "steps": steps,
            "rss_kb": {
                "before": base,
                "after_hold": hold_rss,
                "per_conn": (sum(hold_rss.values()) - sum(base.values())) / max(1, n_conn),
            },
            "client_maxrss_kb": status["client_maxrss_kb"],
        }


# -- report ---------------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def report(results: dict[str, Any]) -> tuple[str, bool]:
    lines: list[str] = []
    ok = True
    f = results.get("fanout")
    if f:
        s = f["subscribers"]
        lat = f["latency_ms"]
        rss = f["rss_kb"]
        w = f["writes"]
        target_dps = results["args"]["rate"] * s["open"]
        p99_ok = lat.get("p99", float("inf")) < TARGET_P99_MS
        lost_ok = f["lost"] == 0 and f["duplicated"] == 0 and s["failed"] == 0
        ok = ok and p99_ok and lost_ok
        deflate = (
            f" with permessage-deflate, negotiated on {s['ws_deflate']:,}"
            if results["args"].get("ws_deflate")
            else ""
        )
        lines += [
            f"== fan-out: {s['requested']} subscribers ({s['sse']} SSE + {s['ws']} WebSocket"
            f"{deflate}), "
            f"{results['args']['rate']:g} writes/s for {results['args']['duration']:g}s ==",
            f"connections held      {s['open']:>10,}   failed to connect: {s['failed']}"
            + (f" {s['failures']}" if s["failures"] else ""),
            "  per worker          "
            + ", ".join(f"pid {p}: {n:,}" for p, n in f["connections_per_worker"].items()),
            f"events/s written      {f['events_per_s']:>10,.1f}   ({w['ok']:,} acked of "
            f"{w['planned']:,} in {f['write_span_s']:.1f}s; errors {w['errors'] or 0}; "
            f"ack p50 {w['ack_ms'].get('p50', 0):.0f} ms p99 {w['ack_ms'].get('p99', 0):.0f} ms)",
            f"deliveries/s          {f['deliveries_per_s']:>10,.0f}   (target {target_dps:,.0f}; "
            f"{f['delivered']:,} of {f['expected_deliveries']:,} in {f['delivery_span_s']:.1f}s)",
            f"commit->receipt p50   {lat.get('p50', float('nan')):>10.1f} ms",
            f"commit->receipt p95   {lat.get('p95', float('nan')):>10.1f} ms",
            f"commit->receipt p99   {lat.get('p99', float('nan')):>10.1f} ms   target < "
            f"{TARGET_P99_MS:g} ms: {mark(p99_ok)}   (max {lat.get('max', float('nan')):.0f} ms)",
            f"lost deliveries       {f['lost']:>10,}   target 0: {mark(f['lost'] == 0)}"
            f"   (counting from seq before writes: {f['lost_counting_from_seq_before']:,})",
            f"duplicated deliveries {f['duplicated']:>10,}   target 0: "
            f"{mark(f['duplicated'] == 0)}   (out of order: {f['out_of_order']})",
            f"streams closed        {sum(f['closed_during_run'].values()):>10,}   "
            + (str(f["closed_during_run"]) if f["closed_during_run"] else ""),
            f"RSS per connection    {rss['per_conn_connected']:>10.1f} KB connected, "
            f"{rss['per_conn_after_load']:.1f} KB after the load (workers "
            f"{sum(rss['before'].values()) / 1024:.0f} -> "
            f"{sum(rss['connected'].values()) / 1024:.0f} -> "
            f"{sum(rss['after_load'].values()) / 1024:.0f} MiB)",
            f"CPU per delivery      {f['cpu_us_per_delivery']['workers']:>10.1f} µs in the "
            f"workers, POSTs included (=> "
            f"{2e6 / max(f['cpu_us_per_delivery']['workers'], 1e-9):,.0f} deliveries/s if they "
            f"had 2 whole cores), {f['cpu_us_per_delivery']['clients']:.1f} µs in the "
            f"subscriber processes; store {f['cpu_us_per_delivery']['store_per_write']:,.0f}"
            " µs per write",
            "CPU cores (writes)    "
            + ", ".join(f"{k} {v:.2f}" for k, v in f["cpu_cores_during_writes"].items())
            + f"   (load avg {' '.join(f['loadavg'])})",
        ]
        for n, run in enumerate(f.get("runs", []), 1):
            lines.append(
                f"  run {n}: p50 {run['p50']:.1f} ms, p99 {run['p99']:.1f} ms, "
                f"{run['deliveries_per_s']:,.0f} deliveries/s, lost {run['lost']:,}"
                + (f", closed {run['closed']}" if run["closed"] else "")
            )
        for pid, prof in f.get("profile", {}).items():
            if "error" in prof:
                lines.append(f"py-spy {pid}: {prof['error']}")
                continue
            total = max(1, prof["samples"])
            lines.append(
                f"-- py-spy worker {pid}: {prof['samples']} samples holding the GIL "
                f"({prof['gil_share']:.0%} of the time); self time by function --"
            )
            lines += [f"  {n / total:6.1%}  {frame}" for frame, n in prof["self"][:15]]
            lines.append("   inclusive, below the gunicorn/uvicorn/middleware trunk:")
            lines += [f"  {n / total:6.1%}  {frame}" for frame, n in prof["inclusive"][:15]]
            lines.append("   inclusive, service/ code:")
            lines += [f"  {n / total:6.1%}  {frame}" for frame, n in prof["ours"][:10]]
    i = results.get("idle")
    if i:
        rss = i["rss_kb"]
        kb_ok = rss["per_conn"] < TARGET_KB_PER_CONN
        idle_ok = i["failed"] == 0 and i["held_after_hold"] == i["requested"]
        ok = ok and kb_ok and idle_ok
        lines += [
            f"== idle: {i['requested']:,} subscribers ({i['sse']:,} SSE + {i['ws']:,} WebSocket"
            + (
                f" with permessage-deflate, negotiated on {i['ws_deflate_negotiated']:,}"
                if results["args"].get("ws_deflate")
                else ""
            )
            + "),"
            f" held {results['args']['idle_hold']:g}s, no writes ==",
            f"connections held      {i['held_after_hold']:>10,}   failed to connect: "
            f"{i['failed']}"
            + (f" {i['failures']}" if i["failures"] else "")
            + (
                f"   closed while idle: {i['closed_during_hold']}"
                if i["closed_during_hold"]
                else ""
            ),
            "  per worker          "
            + ", ".join(f"pid {p}: {n:,}" for p, n in i["connections_per_worker"].items()),
        ]
        for step in i["steps"]:
            lines.append(
                f"RSS per {step['kind'].upper():<3} conn      {step['kb_per_conn']:>10.1f} KB"
                f"   ({step['opened']:,} opened in {step['connect_seconds']:.1f}s)"
            )
        lines += [
            f"RSS per connection    {rss['per_conn']:>10.1f} KB   target < {TARGET_KB_PER_CONN:g}"
            f" KB (Centrifugo ~{CENTRIFUGO_KB_PER_CONN:g} KB): {mark(kb_ok)}   (workers "
            f"{sum(rss['before'].values()) / 1024:.0f} -> "
            f"{sum(rss['after_hold'].values()) / 1024:.0f} MiB)",
        ]
    return "\n".join(lines), ok


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.fanout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--subscribers", type=int, default=None, help="fan-out phase (default 1000)")
    p.add_argument("--rate", type=float, default=100.0, help="writes per second (100)")
    p.add_argument("--duration", type=float, default=None, help="seconds of writes (20)")
    p.add_argument("--idle", type=int, default=None, help="idle subscribers; 0 skips (10000)")
    p.add_argument("--quick", action="store_true", help="100 subscribers, 5 s, idle 1000")
    p.add_argument("--ws-fraction", type=float, default=0.5, help="WebSocket share (0.5)")
    p.add_argument("--idle-ws-fraction", type=float, default=0.5, help="idle WS share (0.5)")
    p.add_argument("--idle-hold", type=float, default=None, help="idle hold seconds (20)")
    p.add_argument("--clients", type=int, default=2, help="subscriber processes (2)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (2)")
    p.add_argument("--senders", type=int, default=32, help="writer connections (32)")
    p.add_argument("--connect-concurrency", type=int, default=64, help="per client process")
    p.add_argument("--drain", type=float, default=15.0, help="max wait for stragglers (s)")
    p.add_argument("--profile", type=float, default=0.0, help="py-spy the workers S seconds")
    p.add_argument("--no-fanout", action="store_true", help="only the idle phase")
    p.add_argument(
        "--ws-deflate",
        action="store_true",
        help="WebSocket clients offer permessage-deflate, as browsers do",
    )
    p.add_argument(
        "--repeat", type=int, default=None, help="fan-out runs, medians reported (3; quick 1)"
    )
    a = p.parse_args(argv)
    a.subscribers = a.subscribers if a.subscribers is not None else (100 if a.quick else 1000)
    a.duration = a.duration if a.duration is not None else (5.0 if a.quick else 20.0)
    a.idle = a.idle if a.idle is not None else (1000 if a.quick else 10000)
    a.idle_hold = a.idle_hold if a.idle_hold is not None else (5.0 if a.quick else 20.0)
    a.repeat = a.repeat if a.repeat is not None else (1 if a.quick else 3)
    if a.no_fanout:
        a.subscribers = 0
    if a.rate <= 0 or a.duration <= 0 or a.subscribers < 0 or a.idle < 0 or a.clients < 1:
        p.error("--rate and --duration must be > 0, counts >= 0, --clients >= 1")
    if a.repeat < 1:
        p.error("--repeat must be >= 1")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = (max(args.subscribers, args.idle) // args.clients) + 256
    if soft < need:
        log(f"warning: open-files limit {soft} < ~{need} needed per client process")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="fanout-run-", dir="/tmp"))
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "args": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nofile": soft,
        },
    }
    try:
        with ExitStack() as stack:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            redis_url, redis_pid = start_redis(workdir, stack)
            runs = []
            for i in range(args.repeat if args.subscribers > 0 else 0):
                if args.repeat > 1:
                    log(f"fan-out run {i + 1} of {args.repeat}")
                runs.append(fanout_phase(args, redis_url, redis_pid, workdir))
            if runs:
                results["fanout_runs"] = runs
                results["fanout"] = median_run(runs)
            if args.idle > 0:
                results["idle"] = idle_phase(args, redis_url, workdir)
            # keep py-spy raw files: copy them next to the JSON
            text, ok = report(results)
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            out = RESULTS_DIR / f"fanout-{stamp}.json"
            for prof in results.get("fanout", {}).get("profile", {}).values():
                raw = prof.get("raw")
                if raw and Path(raw).exists():
                    dest = RESULTS_DIR / f"fanout-{stamp}-{Path(raw).name}"
                    shutil.copy(raw, dest)
                    prof["raw"] = str(dest.relative_to(ROOT))
            out.write_text(json.dumps(results, indent=2, default=str))
    except FanoutError as exc:
        log(f"could not run: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; torn down")
        return 2
    print(text)
    print(f"results: {out.relative_to(ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
