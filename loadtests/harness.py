"""Processes, ports, a private redis-server and /proc readings: one copy for the load tests
(`loadtests.bench`, `loadtests.fanout`) and the end-to-end test fixtures.

Every process started here runs in a session and process group of its own, so a teardown
that signals the group reaches whatever it forked (gunicorn's workers, the store). Readiness
is polled, never slept for. /proc is read through psutil. Nothing here imports test code.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO

import httpx
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent


class CannotRun(Exception):
    """A benchmark could not run (as opposed to: it ran and measured a miss)."""


# Ports for servers come from below the kernel's ephemeral range (32768-60999 by default): a
# port the kernel hands out can be taken by any outgoing connection between our check and the
# server's bind (seen: gunicorn giving up its bind in a busy run; a benchmark's thousands of
# client sockets make it likelier). Each port is offered once per process; the seed keeps
# concurrent processes apart.
_CANDIDATE_PORTS = iter(random.Random(os.getpid()).sample(range(20000, 32000), 12000))


def free_port() -> int:
    for port in _CANDIDATE_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise CannotRun("no free port left below the ephemeral range")


def raise_nofile() -> int:
    """Raise this process's open-files limit to the hard limit, for thousands of sockets; the
    children started afterwards inherit it. Returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def child_env(**extra: str) -> dict[str, str]:
    """The caller's environment, less what would steer a Duckcast child: a metrics dir would be
    wiped by gunicorn's on_starting, a store URL would skip starting our private store."""
    env = dict(os.environ)
    for name in ("PROMETHEUS_MULTIPROC_DIR", "DUCKCAST_STORE_URL", "DUCKCAST_WORKERS"):
        env.pop(name, None)
    env.update(extra)
    return env


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class ProcessGroup:
    """A child in a session and process group of its own (pgid == pid), output to a log file.

    `pipes=True` gives it a stdin and stdout pipe (a client driven over them); stderr still
    goes to the log."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        env: dict[str, str],
        log: Path,
        *,
        cwd: Path = ROOT,
        pipes: bool = False,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else out,
                stderr=out if pipes else subprocess.STDOUT,
                start_new_session=True,
            )
        self.pgid = self.proc.pid

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)

    def stop(self, grace: float = 30.0) -> None:
        """`stop_group`, then reap the leader and close its pipes."""
        if not stop_group(self.pgid, grace):
            print(f"  {self.name}: still running after {grace:g}s; killed", file=sys.stderr)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            print(f"  {self.name}: pid {self.proc.pid} did not exit", file=sys.stderr)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with suppress(OSError):
                    pipe.close()

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def stop_group(pgid: int, grace: float) -> bool:
    """SIGTERM process group `pgid`, wait up to `grace` seconds for every member to exit, then
    SIGKILL whatever is left (a worker, a store) and wait for that. False if it came to that."""
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if wait_until(lambda: not group_members(pgid), grace, 0.05):
        return True
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    if not wait_until(lambda: not group_members(pgid), 10.0, 0.05):
        raise CannotRun(f"process group {pgid} survived SIGKILL: {group_members(pgid)}")
    return False


def wait_http(url: str, group: ProcessGroup, timeout: float = 90.0) -> None:
    """Poll `url` until it answers 200; fail early if the process group's leader exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if not group.alive():
                raise CannotRun(
                    f"{group.name} exited with code {group.proc.returncode} before it was ready:"
                    f"\n{group.tail()}"
                )
            try:
                r = client.get(url)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
    raise CannotRun(f"{group.name} not ready within {timeout:g}s ({url}: {last})")


class RedisServer:
    """A private redis-server on a free port (nothing saved to disk) that can be stopped and
    started again on the same port. Never the machine's own Redis on 6379.

    `args`: extra redis-server options (e.g. --requirepass, --user), after the defaults so
    they override them; `username` and `password`: what the readiness ping authenticates
    with; `tls_ca` (set before start): the ping speaks TLS, trusting this CA."""

    def __init__(
        self,
        workdir: Path,
        *args: str,
        username: str | None = None,
        password: str | None = None,
        name: str = "redis-server",
    ) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.args = list(args)
        self.username, self.password = username, password
        self.tls_ca: Path | None = None
        self.name = name
        self.group: ProcessGroup | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.group is not None
        return self.group.pid

    def start(self, timeout: float = 30.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise CannotRun(
                "redis-server is not installed:\n    apt-get update && apt-get install -y "
                "redis-server"
            )
        cmd = [
            exe, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir), *self.args,
        ]  # fmt: skip
        group = ProcessGroup(
            self.name, cmd, child_env(), self.workdir / f"{self.name}-{self.port}.log"
        )
        self.group = group
        tls = {"ssl": True, "ssl_ca_certs": str(self.tls_ca)} if self.tls_ca else {}
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=self.username,
            password=self.password,
            socket_timeout=1.0,
            **tls,  # type: ignore[arg-type]
        )

        def up() -> bool:
            if not group.alive():
                raise CannotRun(f"redis-server exited early:\n{group.tail()}")
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.TimeoutError):
                return False

        try:
            if not wait_until(up, timeout, 0.05):
                raise CannotRun(f"redis-server did not answer PING within {timeout:g}s")
        except CannotRun:
            self.stop(kill=True)
            raise
        finally:
            client.close()

    def stop(self, kill: bool = False) -> None:
        if self.group is None:
            return
        if kill:
            with suppress(ProcessLookupError):
                os.killpg(self.group.pgid, signal.SIGKILL)
        self.group.stop(grace=10.0)
        self.group = None


def login(base_url: str, username: str, password: str) -> str:
    """Register `username` on a Duckcast server and log in; its bearer token."""
    creds = {"username": username, "password": password}
    with httpx.Client(base_url=base_url, timeout=60.0) as client:
        r = client.post("/api/register", json=creds)
        if r.status_code != 201:
            raise CannotRun(f"register answered {r.status_code}: {r.text[:300]}")
        r = client.post("/api/login", json=creds)
        if r.status_code != 200:
            raise CannotRun(f"login answered {r.status_code}: {r.text[:300]}")
        return str(r.json()["token"])


# -- /proc, through psutil -------------------------------------------------------------------


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def alive(pid: int) -> bool:
    """Running (a zombie has finished: it only waits for its parent to reap it)."""
    try:
        return _live(psutil.Process(pid))
    except psutil.Error:
        return False


def cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def ppid(pid: int) -> int:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return 0


def children(pid: int) -> list[int]:
    """Live direct children of `pid`."""
    try:
        kids = psutil.Process(pid).children()
    except psutil.Error:
        return []
    return sorted(p.pid for p in kids if _live(p))


def descendants(pid: int) -> list[int]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    return sorted(p.pid for p in kids if _live(p))


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid`."""
    found = []
    for proc in psutil.process_iter():
        with suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and _live(proc):
                found.append(proc.pid)
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far; 0 once it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def rss_bytes(pid: int) -> int:
    """Resident memory of a live process; ProcessLookupError if it is gone (a reading of a dead
    process would read as memory freed)."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.NoSuchProcess as exc:
        raise ProcessLookupError(f"no process {pid}") from exc


def tcp_peers(pid: int, local_port: int) -> set[int]:
    """Remote ports of the ESTABLISHED TCP connections `pid` holds on `local_port`."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return set()
    return {
        c.raddr.port
        for c in conns
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == local_port
    }


def busy_cpu_seconds() -> float:
    """CPU seconds all CPUs of the machine spent not idle (nor waiting for I/O) since boot."""
    t = psutil.cpu_times()
    # guest time is already inside user time on Linux
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()
