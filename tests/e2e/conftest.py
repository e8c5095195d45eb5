"""Whole-deployment fixtures: the real `duckcast` commands as subprocesses.

Each command runs in its own process group (so teardown reaches the store and gunicorn children
too), with stdout/stderr captured to files under the test's tmp_path (kept by pytest for
debugging, and read by tests that assert on the logs). Readiness is polled, never slept for.
Data dirs live under /tmp, not pytest's deep tmp_path: the store's AF_UNIX socket goes in there
and socket paths must stay under 107 bytes.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.harness import cmdline, stop_group
from tests.conftest import free_port, wait_until
from tests.leakscan import remember

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).parent / "duckcast"
# The console script the README documents; `python -m service.cli` where it is not installed.
DUCKCAST = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "service.cli"]

# What a DuckDB lock/conflict failure or any unhandled error leaves in a log.
BAD_LOG_LINES = re.compile(
    r"Could not set lock|Conflicting lock|Conflict on|TransactionContext Error|"
    r"database is locked|\block\b|Traceback",
    re.IGNORECASE,
)


def is_store(pid: int) -> bool:
    args = cmdline(pid)
    return "service.cli" in args and "store" in args


def is_gunicorn(pid: int) -> bool:
    return "gunicorn" in cmdline(pid)


# -- processes ------------------------------------------------------------------------------


class DuckcastProcess:
    """One `duckcast …` command in its own process group, its output captured to files."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], logdir: Path, port: int | None = None
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.port = port
        self.stdout_path = logdir / f"{name}.stdout.log"
        self.stderr_path = logdir / f"{name}.stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> DuckcastProcess:
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [*DUCKCAST, *self.args],
                env=self.env,
                cwd=self.stdout_path.parent,  # a relative ./data must not land in the repo
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # own process group: teardown reaches every child
            )
        return self

    def logs(self) -> str:
        text = []
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                text.append(path.read_text(errors="replace"))
        return "\n".join(text)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll GET /readyz until it answers 200; fail with the logs if the process dies."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.running():
                    pytest.fail(
                        f"{self.name} exited with {self.proc and self.proc.returncode} before "
                        f"it was ready:\n{self.log_tail()}"
                    )
                try:
                    r = client.get("/readyz")
                    if r.status_code == 200:
                        return
                    last = f"{r.status_code} {r.text}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.05)
        pytest.fail(f"{self.name} not ready within {timeout}s (last: {last}):\n{self.log_tail()}")

    def wait_listening(self, host: str, port: int, timeout: float = 60.0) -> None:
        """Poll a TCP connect (the store speaks framed protobuf, not HTTP)."""

        def accepts() -> bool:
            if not self.running():
                pytest.fail(f"{self.name} exited before listening:\n{self.log_tail()}")
            try:
                socket.create_connection((host, port), 0.5).close()
                return True
            except OSError:
                return False

        wait_until(accepts, timeout=timeout, interval=0.05)

    def signal(self, signum: int) -> None:
        """Signal the leader only, as `docker stop` or an init system would."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill_group(self, grace: float = 10.0) -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left after `grace` seconds."""
        if self.proc is None:
            return
        stop_group(self.proc.pid, grace)  # start_new_session: the leader's pid is the group id
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class Deployment:
    """Starts `duckcast` commands for one test and tears every one of them down after it."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.processes: list[DuckcastProcess] = []
        self._tempdirs: list[Path] = []
        self.secret = secrets.token_hex(32)
        remember(self.secret)  # the log scan fails the run if it shows up in a log

    def data_dir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="dc-", dir="/tmp"))
        self._tempdirs.append(path)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment: nothing of ours leaks in from the caller's shell."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("DUCKCAST_") and k not in ("REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")
        }
        env["DUCKCAST_SECRET_KEY"] = self.secret
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def command(
        self, name: str, args: list[str], env: dict[str, str], port: int | None = None
    ) -> DuckcastProcess:
        proc = DuckcastProcess(name, args, env, self.logdir, port)
        self.processes.append(proc)
        return proc.start()

    def serve(
        self,
        name: str = "serve",
        *,
        workers: int = 1,
        data_dir: Path | None = None,
        port: int | None = None,
        ready: bool = True,
        **env: str,
    ) -> DuckcastProcess:
        port = port or free_port()
        data_dir = data_dir or self.data_dir()
        args = [
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--workers",
            str(workers),
        ]
        proc = self.command(name, args, self.env(**env), port)
        if ready:
            proc.wait_ready()
        return proc

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.kill_group()
        for path in self._tempdirs:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deploy = Deployment(tmp_path)
    try:
        yield deploy
    finally:
        deploy.close()


# -- API helpers ----------------------------------------------------------------------------


def register_and_login(
    client: httpx.Client, username: str, password: str = "correct horse"
) -> dict[str, str]:
    """Register and log in (sync); returns the Authorization header for that user."""
    r = client.post("/api/register", json={"username": username, "password": password})
    assert r.status_code == 201, r.text
    r = client.post("/api/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def list_all(client: httpx.Client, headers: dict[str, str]) -> tuple[list[dict], int]:
    """Every item, following pages of 100; and the `total` the first page reported."""
    items: list[dict] = []
    r = client.get("/api/items", params={"page": 1, "limit": 100}, headers=headers)
    assert r.status_code == 200, r.text
    first = r.json()
    items.extend(first["items"])
    for page in range(2, first["pages"] + 1):
        r = client.get("/api/items", params={"page": page, "limit": 100}, headers=headers)
        assert r.status_code == 200, r.text
        items.extend(r.json()["items"])
    return items, first["total"]


def bad_log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if BAD_LOG_LINES.search(line)]
