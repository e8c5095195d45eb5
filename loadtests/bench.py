"""`python -m loadtests.bench` (or `make bench`): Duckcast against the bare-ASGI HTTP ceiling.

What it does, start to end, all on loopback:

1. starts a private `redis-server` on a free port (`--save "" --appendonly no`);
2. starts `duckcast serve --workers 2` (store process + gunicorn) on a fresh data dir in /tmp,
   waits for `GET /readyz` to answer 200, registers a user, logs in and bulk-creates the items
   the GET scenarios read;
3. starts the ceiling, `loadtests/ceiling.py`, under the same gunicorn settings
   (`gunicorn -c deploy/gunicorn.conf.py --workers 2`);
4. drives both with `wrk --latency` and the same Lua scripts (loadtests/wrk/) and settings,
   interleaving service and ceiling runs, each after a warm-up;
5. prints a table of medians with ratio = service / ceiling against the targets, and writes
   every run to loadtests/results/<timestamp>.json;
6. tears everything down (SIGTERM to each process group, then SIGKILL), on Ctrl-C or error too.

Exit status: 0 when every run completed without errors, 1 when any run saw non-2xx responses or
socket errors (or, with --strict, when a target is missed), 2 when it could not run at all.
`--profile get_item,create` also samples one API worker and the store with py-spy while the
service serves that scenario, and prints where their time goes.
`--baseline PATH` serves another checkout (e.g. `git worktree add --detach /tmp/duckcast-main
main`) the same way, measured in the same interleaving, and prints a before/after table.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtests.harness import (
    ROOT,
    CannotRun,
    ProcessGroup,
    RedisServer,
    child_env,
    children,
    cmdline,
    cpu_seconds,
    descendants,
    free_port,
    login,
    ppid,
    wait_http,
)
from service.pb import duckcast_pb2 as pb

WRK_DIR = ROOT / "loadtests" / "wrk"
RESULTS_DIR = ROOT / "loadtests" / "results"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"

JSON = "application/json"
PROTOBUF = "application/protobuf"
FORMATS = {"json": JSON, "protobuf": PROTOBUF}
WRK_TIMEOUT = "10s"  # a slow answer is a latency sample, not a dropped request
PASSWORD = "bench-password-123"


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    path: str
    script: str
    target: float  # the minimum service/ceiling ratio


SCENARIOS = (
    Scenario("get_item", "GET /api/items/{id}", "/api/items", "get_item.lua", 0.5),
    Scenario("list", "GET /api/items?limit=20", "/api/items?limit=20", "list.lua", 0.25),
    Scenario("create", "POST /api/items", "/api/items", "create.lua", 0.15),
)


class BenchError(CannotRun):
    """The benchmark could not run (as opposed to: it ran and measured errors)."""


# -- processes ------------------------------------------------------------------------------


def roles(group: ProcessGroup) -> dict[int, str]:
    """The group's processes by role: the store, gunicorn workers, and the rest (supervisor,
    gunicorn master), which only idle during a run."""
    found = {}
    for pid in [group.pid, *descendants(group.pid)]:
        cmd = cmdline(pid)
        line = " ".join(cmd)
        if " store" in line:
            found[pid] = "store"
        elif "gunicorn" in line and pid != group.pid and cmdline(ppid(pid)) == cmd:
            found[pid] = "worker"
        else:
            found[pid] = "other"
    return found


@dataclass
class CpuUse:
    """CPU the servers spent per answered request during one run: robust where req/s is not
    (on a shared machine a starved server answers fewer requests but spends the same CPU on
    each). `worker_shares` shows how evenly the gunicorn workers shared the connections."""

    us_per_request: float
    by_role_us: dict[str, float]
    worker_shares: list[float]


class CpuMeter:
    def __init__(self, group: ProcessGroup) -> None:
        self.roles = roles(group)
        self.start = {pid: cpu_seconds(pid) for pid in self.roles}

    def stop(self, requests: int) -> CpuUse:
        spent = {pid: cpu_seconds(pid) - t0 for pid, t0 in self.start.items()}
        n = max(requests, 1)
        by_role: dict[str, float] = {}
        for pid, sec in spent.items():
            by_role[self.roles[pid]] = by_role.get(self.roles[pid], 0.0) + sec / n * 1e6
        workers = [max(sec, 0.0) for pid, sec in spent.items() if self.roles[pid] == "worker"]
        total = sum(workers) or 1.0
        return CpuUse(
            us_per_request=sum(by_role.values()),
            by_role_us={k: round(v, 1) for k, v in by_role.items()},
            worker_shares=sorted((round(w / total, 3) for w in workers), reverse=True),
        )


# -- wrk ------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    non2xx: int
    socket_errors: dict[str, int]
    raw: str = field(repr=False)

    @property
    def errors(self) -> int:
        return self.non2xx + sum(self.socket_errors.values())


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(out: str) -> WrkResult:
    def need(pattern: str) -> re.Match[str]:
        m = re.search(pattern, out, re.MULTILINE)
        if m is None:
            raise BenchError(f"unexpected wrk output (no match for {pattern!r}):\n{out}")
        return m

    rps = float(need(r"^Requests/sec:\s+([\d.]+)").group(1))
    p50 = need(r"^\s+50%\s+([\d.]+)(us|ms|s|m|h)\s*$")
    p99 = need(r"^\s+99%\s+([\d.]+)(us|ms|s|m|h)\s*$")
    total = need(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h),")
    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        socket_errors = dict(zip(socket_errors, map(int, m.groups()), strict=True))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        rps=rps,
        p50_ms=_ms(*p50.groups()),
        p99_ms=_ms(*p99.groups()),
        requests=int(total.group(1)),
        seconds=_ms(total.group(2), total.group(3)) / 1000,
        non2xx=int(m.group(1)) if m else 0,
        socket_errors=socket_errors,
        raw=out,
    )


@dataclass(frozen=True)
class Load:
    connections: int
    threads: int


def run_wrk(
    base_url: str, scenario: Scenario, script_args: Sequence[str], load: Load, seconds: float
) -> WrkResult:
    cmd = [
        "wrk",
        "--latency",
        "-t",
        str(load.threads),
        "-c",
        str(load.connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        WRK_TIMEOUT,
        "-s",
        str(WRK_DIR / scenario.script),
        base_url + scenario.path,
        "--",
        *script_args,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {seconds + 60:g}s: {cmd}") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()}\n{done.stdout}")
    return parse_wrk(done.stdout)


def wrk_version() -> str:
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    return (done.stdout + done.stderr).splitlines()[0].strip()


def require_tools() -> None:
    missing = []
    if shutil.which("wrk") is None:
        missing.append(
            "wrk is not installed. Install it with:\n"
            "    apt-get update && apt-get install -y wrk      (Debian/Ubuntu)\n"
            "    brew install wrk                               (macOS)"
        )
    if shutil.which("redis-server") is None:
        missing.append(
            "redis-server is not installed (`duckcast serve --workers 2` needs Redis):\n"
            "    apt-get update && apt-get install -y redis-server"
        )
    if missing:
        raise BenchError("\n".join(missing))


# -- the service's data ---------------------------------------------------------------------


@dataclass
class Fixture:
    token: str
    lo: int
    hi: int
    bodies: dict[str, Path]  # format -> file with the POST body


def prepare_service(base_url: str, items: int, workdir: Path) -> Fixture:
    """Register and log in a user, bulk-create `items` items, check every scenario once."""
    token = login(base_url, f"bench_{uuid.uuid4().hex[:20]}", PASSWORD)
    with httpx.Client(base_url=base_url, timeout=60.0) as client:
        auth = {"Authorization": f"Bearer {token}"}
        ids: list[int] = []
        while len(ids) < items:
            n = min(1000, items - len(ids))
            batch = [
                {
                    "title": f"bench item {len(ids) + i}",
                    "description": "pre-created by loadtests.bench for the GET scenarios",
                    "status": "completed" if i % 3 == 0 else "active",
                    "priority": (len(ids) + i) % 101,
                }
                for i in range(n)
            ]
            r = client.post("/api/items/bulk", json={"items": batch}, headers=auth)
            if r.status_code != 201:
                raise BenchError(f"bulk create answered {r.status_code}: {r.text[:300]}")
            ids.extend(item["id"] for item in r.json()["items"])
        lo, hi = min(ids), max(ids)
        if hi - lo + 1 != len(ids):
            raise BenchError(f"bulk-created ids are not contiguous ({lo}..{hi}, {len(ids)} ids)")

        bodies = {
            "json": workdir / "create.json",
            "protobuf": workdir / "create.pb",
        }
        bodies["json"].write_bytes(json.dumps({"title": "bench item"}).encode())
        bodies["protobuf"].write_bytes(pb.ItemCreate(title="bench item").SerializeToString())

        # One request per scenario and format, so a broken route fails here, not as a
        # screenful of non-2xx under load.
        for fmt, media in FORMATS.items():
            headers = {**auth, "Accept": media}
            checks: list[tuple[str, str, bytes | None, int, Any]] = [
                ("GET", f"/api/items/{lo}", None, 200, pb.Item),
                ("GET", "/api/items?limit=20", None, 200, pb.ItemPage),
                ("POST", "/api/items", bodies[fmt].read_bytes(), 201, pb.Item),
            ]
            for method, path, body, status, message in checks:
                extra = {"Content-Type": media} if body is not None else {}
                r = client.request(method, path, content=body, headers={**headers, **extra})
                if r.status_code != status or r.headers.get("content-type") != media:
                    raise BenchError(
                        f"{method} {path} ({fmt}) answered {r.status_code} "
                        f"{r.headers.get('content-type')}: {r.content[:300]!r}"
                    )
                if fmt == "protobuf":
                    message.FromString(r.content)
                else:
                    r.json()
    return Fixture(token=token, lo=lo, hi=hi, bodies=bodies)


def script_args(scenario: Scenario, fmt: str, fx: Fixture) -> list[str]:
    args = [f"token={fx.token}", f"accept={FORMATS[fmt]}"]
    if scenario.name == "get_item":
        args += [f"lo={fx.lo}", f"hi={fx.hi}"]
    if scenario.name == "create":
        args += [f"ctype={FORMATS[fmt]}", f"body={fx.bodies[fmt]}"]
    return args


# -- the runs -------------------------------------------------------------------------------


@dataclass
class Run:
    scenario: str
    format: str
    target: str  # "service" | "ceiling" | "baseline" (--baseline: the other checkout)
    rep: int
    warmup: WrkResult | None
    result: WrkResult
    cpu: CpuUse


@dataclass
class Row:
    scenario: str
    label: str
    format: str
    rps: float
    p50_ms: float
    p99_ms: float
    ceiling_rps: float
    ceiling_p50_ms: float
    ceiling_p99_ms: float
    ratio: float
    target: float
    verdict: str
    service_rps_runs: list[float]
    ceiling_rps_runs: list[float]
    service_errors: int
    ceiling_errors: int
    cpu_us: float  # median CPU per request, all service processes
    ceiling_cpu_us: float
    cpu_by_role_us: dict[str, float]


def _errors(run: Run) -> int:
    return run.result.errors + (run.warmup.errors if run.warmup else 0)


def summarize(runs: list[Run], target: str = "service") -> list[Row]:
    """One row per scenario and format: `target`'s runs against the ceiling's."""
    rows = []
    for sc in SCENARIOS:
        for fmt in FORMATS:
            mine = [r for r in runs if r.scenario == sc.name and r.format == fmt]
            if not mine:
                continue
            svc_runs = [r for r in mine if r.target == target]
            if not svc_runs:
                continue
            svc = [r.result for r in svc_runs]
            ceil = [r.result for r in mine if r.target == "ceiling"]
            rps = statistics.median(r.rps for r in svc)
            ceiling = statistics.median(r.rps for r in ceil)
            ratio = rps / ceiling if ceiling else 0.0
            rows.append(
                Row(
                    scenario=sc.name,
                    label=sc.label,
                    format=fmt,
                    rps=rps,
                    p50_ms=statistics.median(r.p50_ms for r in svc),
                    p99_ms=statistics.median(r.p99_ms for r in svc),
                    ceiling_rps=ceiling,
                    ceiling_p50_ms=statistics.median(r.p50_ms for r in ceil),
                    ceiling_p99_ms=statistics.median(r.p99_ms for r in ceil),
                    ratio=ratio,
                    target=sc.target,
                    verdict="PASS" if ratio >= sc.target else "MISS",
                    service_rps_runs=[r.rps for r in svc],
                    ceiling_rps_runs=[r.rps for r in ceil],
                    service_errors=sum(_errors(r) for r in svc_runs),
                    ceiling_errors=sum(_errors(r) for r in mine if r.target == "ceiling"),
                    cpu_us=statistics.median(r.cpu.us_per_request for r in svc_runs),
                    ceiling_cpu_us=statistics.median(
                        r.cpu.us_per_request for r in mine if r.target == "ceiling"
                    ),
                    cpu_by_role_us={
                        role: round(
                            statistics.median(r.cpu.by_role_us.get(role, 0) for r in svc_runs), 1
                        )
                        for role in ("worker", "store")
                    },
                )
            )
    return rows


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    return f"±{(max(values) - min(values)) / 2 / statistics.median(values) * 100:.0f}%"


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'scenario':<24}{'format':<10}{'req/s':>9}{'spread':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'ceiling req/s':>15}{'spread':>8}{'ratio':>8}{'target':>9}  {'verdict':<8}{'errors':>7}"
        f"{'cpu us/req':>12}{'ceiling':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        errors = r.service_errors + r.ceiling_errors
        lines.append(
            f"{r.label:<24}{r.format:<10}{r.rps:>9,.0f}{spread(r.service_rps_runs):>8}"
            f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.ceiling_rps:>15,.0f}"
            f"{spread(r.ceiling_rps_runs):>8}{r.ratio:>8.3f}{'>= ' + format(r.target, '.2f'):>9}"
            f"  {r.verdict:<8}{errors:>7}{r.cpu_us:>12,.0f}{r.ceiling_cpu_us:>9,.0f}"
        )
    return "\n".join(lines)


def format_before_after(before: list[Row], after: list[Row]) -> str:
    head = (
        f"{'scenario':<24}{'format':<10}{'before req/s':>13}{'ratio':>7}{'after req/s':>12}"
        f"{'ratio':>7}{'change':>8}{'ceiling req/s':>15}{'cpu us/req before':>19}{'after':>7}"
    )
    lines = [head, "-" * len(head)]
    old = {(r.scenario, r.format): r for r in before}
    for r in after:
        b = old.get((r.scenario, r.format))
        if b is None:
            continue
        change = f"{r.rps / b.rps - 1:+.0%}" if b.rps else "-"
        lines.append(
            f"{r.label:<24}{r.format:<10}{b.rps:>13,.0f}{b.ratio:>7.3f}{r.rps:>12,.0f}"
            f"{r.ratio:>7.3f}{change:>8}{r.ceiling_rps:>15,.0f}{b.cpu_us:>19,.0f}{r.cpu_us:>7,.0f}"
        )
    return "\n".join(lines)


def error_report(runs: list[Run]) -> list[str]:
    out = []
    for r in runs:
        for kind, res in (("warm-up", r.warmup), ("run", r.result)):
            if res is not None and res.errors:
                sock = ", ".join(f"{k} {v}" for k, v in res.socket_errors.items() if v)
                out.append(
                    f"{r.target} {r.scenario}/{r.format} rep {r.rep} {kind}: "
                    f"{res.non2xx} non-2xx/3xx of {res.requests} responses"
                    + (f"; socket errors: {sock}" if sock else "")
                )
    return out


# -- py-spy ---------------------------------------------------------------------------------


# Every thread, sampled with the process paused (py-spy's default): --nonblocking gave torn
# stacks here and --gil missed most samples. The store's writer works inside DuckDB with the
# GIL released, so its time shows only this way.
SPY_MODES: dict[str, list[str]] = {"worker": [], "store": []}
# py-spy's idle detection misses threads blocked in C (queue.get, epoll) on this kind of VM: a
# sample whose innermost frame is one of these is a thread waiting for work, not working.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py)",
    "GroupCommitWriter._run (service/store/writer.py)",
    "EpollSelector.select (selectors.py)",
    "Condition.wait (threading.py)",
    "Event.wait (threading.py)",
    "Thread.join (threading.py)",
    "WorkerThread.run (anyio/_backends/_asyncio.py)",
    # uvloop runs the loop in C: a sample here is mostly the worker waiting in epoll
    "Runner.run (asyncio/runners.py)",
)


def _frame_key(frame: str) -> tuple[str, str]:
    """'handle (service/store/engine.py:150)' -> ('handle (service/store/engine.py)', pkg)."""
    m = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame, "?"
    func, path = m.groups()
    return f"{func} ({_short(path)})", _package(path)


def _short(path: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/", "/lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _package(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if path.startswith(str(ROOT) + "/"):
        rel = path[len(str(ROOT)) + 1 :].split("/")
        return ".".join(p.removesuffix(".py") for p in rel[:2])
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 2)
        return "stdlib:" + rest[1].removesuffix(".py") if len(rest) > 1 else "stdlib"
    return path or "?"


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Top frames of a py-spy `-f raw` (collapsed stacks) file, by self and inclusive samples."""
    self_f: collections.Counter[str] = collections.Counter()
    incl_f: collections.Counter[str] = collections.Counter()
    by_pkg: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_key(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        if frames[-1][0] in IDLE_LEAVES:
            waiting += n
            continue
        total += n
        self_f[frames[-1][0]] += n
        by_pkg[frames[-1][1]] += n
        for key in {f[0] for f in frames}:
            incl_f[key] += n

    def share(c: collections.Counter[str], n: int = top) -> list[tuple[str, float]]:
        return [(k, round(v / total, 4)) for k, v in c.most_common(n)] if total else []

    return {
        "samples": total,
        "waiting_samples": waiting,
        "self": share(self_f),
        # frames under most samples (runpy, gunicorn, middleware, the loop) say little
        "inclusive": [kv for kv in share(incl_f, 300) if kv[1] < 0.7][:top],
        "self_by_package": share(by_pkg),
    }


def print_profile(title: str, summary: dict[str, Any], rate: int, seconds: float) -> None:
    busy = summary["samples"] / (rate * seconds) if seconds else 0
    print(
        f"\n  {title}: {summary['samples']} busy samples (~{busy:.0%} of one core);"
        f" {summary['waiting_samples']} more of threads waiting for work, left out"
    )
    for heading, key, n in (
        ("self time by package", "self_by_package", 8),
        ("self time by function", "self", 12),
        ("inclusive time (frames under < 70% of samples)", "inclusive", 15),
    ):
        print(f"    {heading}:")
        for name, frac in summary[key][:n]:
            print(f"      {frac:6.1%}  {name}")


def profile_scenario(
    base_url: str,
    scenario: Scenario,
    fmt: str,
    fx: Fixture,
    load: Load,
    service: ProcessGroup,
    out_dir: Path,
    seconds: float,
    rate: int = 100,
) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("--profile needs py-spy: pip install py-spy")
    # supervisor -> (store, gunicorn master -> workers)
    procs = children(service.proc.pid)
    store = [p for p in procs if " store" in " ".join(cmdline(p))]
    master = [p for p in procs if "gunicorn" in " ".join(cmdline(p))]
    workers = children(master[0]) if master else []
    if not store or not workers:
        raise BenchError(f"could not find the store and workers under pid {service.proc.pid}")
    targets = {"worker": workers[0], "store": store[0]}
    wrk_seconds = seconds + 4
    wrk = subprocess.Popen(
        [
            "wrk",
            "--latency",
            "-t",
            str(load.threads),
            "-c",
            str(load.connections),
            "-d",
            f"{wrk_seconds:g}s",
            "--timeout",
            WRK_TIMEOUT,
            "-s",
            str(WRK_DIR / scenario.script),
            base_url + scenario.path,
            "--",
            *script_args(scenario, fmt, fx),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    result: dict[str, Any] = {"scenario": scenario.name, "format": fmt, "pids": targets}
    try:
        time.sleep(2)  # let the load reach steady state before sampling
        spies = {}
        for name, pid in targets.items():
            raw = out_dir / f"{scenario.name}-{fmt}-{name}.txt"
            cmd = [spy, "record", "-d", f"{seconds:g}", "-r", str(rate), *SPY_MODES[name]]
            cmd += ["-f", "raw", "-o", str(raw), "-p", str(pid)]
            spies[name] = (
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
                raw,
            )
        for name, (proc, raw) in spies.items():
            _, err = proc.communicate(timeout=seconds + 60)
            if proc.returncode != 0 or not raw.exists():
                raise BenchError(f"py-spy on the {name} failed: {err.decode()[-500:]}")
            result[name] = summarize_profile(raw)
            result[name]["file"] = str(raw)
        out, _ = wrk.communicate(timeout=wrk_seconds + 60)
        result["wrk"] = asdict(parse_wrk(out))
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    print(
        f"\nprofile: {scenario.label} ({fmt}), {seconds:g}s at {rate} Hz, "
        f"service at {result['wrk']['rps']:,.0f} req/s while sampled"
    )
    for name in targets:
        print_profile(f"{name} pid {targets[name]}", result[name], rate, seconds)
    return result


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description="Duckcast (duckcast serve --workers 2) against a bare ASGI ceiling under the "
        "same gunicorn settings, driven by wrk.",
    )
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measured run (8)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each run")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    p.add_argument("--repeats", type=int, default=3, help="runs per scenario and target (3)")
    p.add_argument("--items", type=int, default=2000, help="items created before the runs")
    p.add_argument("--quick", action="store_true", help="smoke settings: 1 repeat of 3 s")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios to run (get_item,list,create); default all",
    )
    p.add_argument(
        "--formats", default="json,protobuf", help="comma-separated formats (json,protobuf)"
    )
    p.add_argument(
        "--profile",
        default="",
        help="after the runs, sample one API worker and the store with py-spy while the "
        "service serves these scenarios (e.g. get_item,create)",
    )
    p.add_argument("--profile-seconds", type=float, default=10.0)
    p.add_argument("--no-measure", action="store_true", help="skip the measured runs")
    p.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of Duckcast (e.g. `git worktree add --detach /tmp/duckcast-main "
        "main`), served the same way and measured in the same interleaving: 'before' next to "
        "this checkout's 'after'",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.duration = 1, 3.0
    for name in ("duration", "connections", "threads", "repeats", "items"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    known = {s.name for s in SCENARIOS}
    for opt in ("only", "profile"):
        names = [n for n in getattr(args, opt).split(",") if n]
        if unknown := set(names) - known:
            p.error(f"--{opt}: unknown scenario(s) {sorted(unknown)}; choose from {sorted(known)}")
        setattr(args, opt, names)
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "service" / "cli.py").is_file():
            p.error(f"--baseline: {args.baseline} is not a Duckcast checkout")
    args.formats = [f for f in args.formats.split(",") if f]
    if not args.formats or set(args.formats) - set(FORMATS):
        p.error("--formats: choose from json,protobuf")
    if args.threads > args.connections:
        p.error("--threads must not exceed --connections")
    return args


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGINT tear down like Ctrl-C does (a shell starts background jobs with SIGINT
    ignored; restore Python's handler so `kill -INT` works there too)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


def git_head(checkout: Path = ROOT) -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        require_tools()
    except CannotRun as exc:
        print(f"loadtests.bench: {exc}", file=sys.stderr)
        return 2
    with sigterm_as_interrupt(), ExitStack() as stack:
        try:
            return bench(args, stack)
        except KeyboardInterrupt:
            print("\ninterrupted; tearing down", file=sys.stderr)
            return 130
        except CannotRun as exc:
            print(f"\nloadtests.bench: {exc}", file=sys.stderr)
            return 2
    return 2  # unreachable; keeps type checkers calm


def bench(args: argparse.Namespace, stack: ExitStack) -> int:
    groups: list[ProcessGroup] = []

    keep_logs = False

    def teardown() -> None:
        # SIGTERM every group first, so they shut down in parallel, then SIGKILL stragglers.
        # A second Ctrl-C must not cut this short (it is bounded: SIGKILL follows in 30 s).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for g in groups:
                g.terminate()
            for g in reversed(groups):
                g.stop()
            groups.clear()
        finally:
            signal.signal(signal.SIGINT, previous)

    def remove_dirs() -> None:
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(f"{data_dir}-baseline", ignore_errors=True)
        if keep_logs:
            print(f"logs kept in {work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)

    data_dir = Path(tempfile.mkdtemp(prefix="duckcast-bench-data-", dir="/tmp"))
    work_dir = Path(tempfile.mkdtemp(prefix="duckcast-bench-", dir="/tmp"))
    stack.callback(remove_dirs)
    stack.callback(teardown)  # runs first: processes stop before their directories go
    try:
        code = _bench(args, groups, data_dir, work_dir)
    except BaseException:
        keep_logs = True
        raise
    keep_logs = code != 0
    return code


def _bench(
    args: argparse.Namespace,
    groups: list[ProcessGroup],
    data_dir: Path,
    work_dir: Path,
) -> int:
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    load = Load(args.connections, args.threads)
    scenarios = [s for s in SCENARIOS if not args.only or s.name in args.only]

    api_port, ceiling_port = free_port(), free_port()
    while ceiling_port == api_port:
        ceiling_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    ceiling = f"http://127.0.0.1:{ceiling_port}"

    print(f"loadtests.bench: data {data_dir}, logs {work_dir}")
    redis_server = RedisServer(work_dir)
    redis_server.start()
    assert redis_server.group is not None
    groups.append(redis_server.group)

    service = ProcessGroup(
        "duckcast serve",
        [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--workers",
            "2",
            "--port",
            str(api_port),
            "--data-dir",
            str(data_dir),
        ],
        child_env(REDIS_URL=redis_server.url),
        work_dir / "service.log",
    )
    groups.append(service)
    ceiling_group = ProcessGroup(
        "ceiling",
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(GUNICORN_CONF),
            "--bind",
            f"127.0.0.1:{ceiling_port}",
            "--workers",
            "2",
            "loadtests.ceiling:app",
        ],
        child_env(),
        work_dir / "ceiling.log",
    )
    groups.append(ceiling_group)
    baseline = None
    if args.baseline is not None:
        base_port = free_port()
        while base_port in (api_port, ceiling_port):
            base_port = free_port()
        base_url = f"http://127.0.0.1:{base_port}"
        # The other checkout's code first on the path: it runs as it would from its own tree.
        base_env = child_env(REDIS_URL=redis_server.url, PYTHONPATH=str(args.baseline))
        base_cmd = [sys.executable, "-m", "service.cli", "serve", "--workers", "2"]
        base_cmd += ["--port", str(base_port), "--data-dir", f"{data_dir}-baseline"]
        baseline = ProcessGroup(
            "baseline",
            base_cmd,
            base_env,
            work_dir / "baseline.log",
            cwd=args.baseline,
        )
        groups.append(baseline)
    wait_http(api + "/readyz", service)
    wait_http(ceiling + "/readyz", ceiling_group)
    fx = prepare_service(api, args.items, work_dir)
    print(
        f"ready: service {api}, ceiling {ceiling}; {fx.hi - fx.lo + 1} items (ids {fx.lo}..{fx.hi})"
    )
    targets = [("service", api, service, fx), ("ceiling", ceiling, ceiling_group, fx)]
    if baseline is not None:
        wait_http(base_url + "/readyz", baseline)
        base_fx = prepare_service(base_url, args.items, work_dir)
        targets.append(("baseline", base_url, baseline, base_fx))
        print(f"baseline: {args.baseline} ({git_head(args.baseline)}) at {base_url}")
    print(
        f"wrk: {load.threads} threads, {load.connections} connections, {args.warmup:g}s warm-up"
        f" + {args.duration:g}s per run, {args.repeats} repeat(s), service and ceiling"
        " interleaved"
    )

    runs: list[Run] = []
    load_before = os.getloadavg()
    if not args.no_measure:
        for sc in scenarios:
            for fmt in args.formats:
                for rep in range(args.repeats):
                    order = list(targets)
                    if rep % 2:
                        order.reverse()  # ABAB... would favour whoever goes first
                    for target, url, group, tfx in order:
                        sargs = script_args(sc, fmt, tfx)
                        if not group.alive():
                            raise BenchError(f"{group.name} died:\n{group.tail()}")
                        warm = None
                        if args.warmup > 0:
                            warm = run_wrk(url, sc, sargs, load, args.warmup)
                        meter = CpuMeter(group)
                        res = run_wrk(url, sc, sargs, load, args.duration)
                        cpu = meter.stop(res.requests)
                        runs.append(Run(sc.name, fmt, target, rep + 1, warm, res, cpu))
                        flag = f"  !! {res.errors} errors" if res.errors else ""
                        split = "/".join(f"{w:.0%}" for w in cpu.worker_shares)
                        print(
                            f"  {sc.label:<24} {fmt:<9} {target:<8} rep {rep + 1}: "
                            f"{res.rps:>9,.0f} req/s  p50 {res.p50_ms:7.2f} ms"
                            f"  p99 {res.p99_ms:7.2f} ms  cpu {cpu.us_per_request:6.0f} us/req"
                            f" (workers {split}){flag}",
                            flush=True,
                        )
    load_after = os.getloadavg()

    profiles = []
    if args.profile:
        prof_dir = RESULTS_DIR / f"{stamp}-profiles"
        prof_dir.mkdir(parents=True, exist_ok=True)
        for name in args.profile:
            sc = next(s for s in SCENARIOS if s.name == name)
            profiles.append(
                profile_scenario(
                    api, sc, args.formats[0], fx, load, service, prof_dir, args.profile_seconds
                )
            )

    rows = summarize(runs)
    before = summarize(runs, "baseline")
    problems = error_report(runs)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{stamp}.json"
    report = {
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "config": {
            "connections": load.connections,
            "threads": load.threads,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeats": args.repeats,
            "items": args.items,
            "wrk_timeout": WRK_TIMEOUT,
            "service": "duckcast serve --workers 2 (store process + gunicorn)",
            "ceiling": "gunicorn -c deploy/gunicorn.conf.py --workers 2 loadtests.ceiling:app",
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "wrk": wrk_version(),
            "git_head": git_head(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "summary": [asdict(r) for r in rows],
        "baseline": str(args.baseline) if args.baseline else None,
        "baseline_summary": [asdict(r) for r in before],
        "errors": problems,
        "runs": [
            {
                "scenario": r.scenario,
                "format": r.format,
                "target": r.target,
                "rep": r.rep,
                "warmup": asdict(r.warmup) if r.warmup else None,
                "result": asdict(r.result),
                "cpu": asdict(r.cpu),
            }
            for r in runs
        ],
        "profiles": profiles,
    }
    out.write_text(json.dumps(report, indent=2))

    if rows:
        print()
        print(format_table(rows))
        print(
            "\nreq/s, p50, p99: medians over the service's runs; ceiling req/s: median over the"
            " ceiling's runs;\nratio = service / ceiling; spread = half the min-max range of"
            " the runs, relative to their median;\ncpu us/req: CPU time of all the server's"
            " processes per answered request (median), service vs ceiling."
        )
        if before:
            print(f"\nbefore = {args.baseline}, after = this checkout ({git_head()}):")
            print(format_before_after(before, rows))
        print(
            f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
            f"on {os.cpu_count()} cores (wrk shares them with the servers)"
        )
    print(f"results: {out.relative_to(ROOT)}")
    if problems:
        banner = "!" * 78
        print(f"\n{banner}\n!! ERRORS DURING THE BENCHMARK: these numbers include failed requests")
        for line in problems:
            print(f"!!   {line}")
        print(f"!! service log: {service.log} (kept)\n{banner}")
        return 1
    if args.strict and any(r.verdict == "MISS" for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
