"""`duckcast serve --workers N`: runs the store process and gunicorn, and keeps the store up.

If the store dies it is restarted (the workers' store clients reconnect on their next call);
if gunicorn exits, everything stops. SIGTERM/SIGINT stop gunicorn first (so workers finish
their requests), then the store (so it drains queued writes and checkpoints).

The store and gunicorn each run in a process group of their own: Ctrl-C in a terminal signals
the whole foreground group, and the store must not start shutting down while workers still
send it requests. A store whose supervisor is gone (killed) stops by itself
(`DUCKCAST_SUPERVISED`, service/store/process.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from service.config import Settings
from service.keys import Keys

logger = logging.getLogger("duckcast.supervisor")


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as environment variables, so child processes see CLI overrides too."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None or name in ("secret_key", "secret_key_file"):
            continue  # secret_env() says where the secret is
        if name == "data_dir":
            value = Path(value).resolve()
        env["REDIS_URL" if name == "redis_url" else f"DUCKCAST_{name.upper()}"] = str(value)
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.data_dir.resolve() / "metrics"))
    return env


def secret_env(settings: Settings, keys: Keys) -> dict[str, str]:
    """How the store and the workers find the secret this process resolved (service.keys):
    the same setting, or the generated file's path, so they never generate one of their own."""
    if settings.secret_key is not None:
        return {"DUCKCAST_SECRET_KEY": settings.secret_key.get_secret_value()}
    path = settings.secret_key_file or Path(keys.source)
    return {"DUCKCAST_SECRET_KEY_FILE": str(Path(path).resolve())}


def wait_for_store(url: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    kind, _, rest = url.partition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"duckcast: the store exited with code {proc.returncode}")
        try:
            if kind == "unix":
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(rest)
            else:
                host, _, port = rest.rpartition(":")
                socket.create_connection((host.strip("[]"), int(port)), 1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"duckcast: the store at {url} did not come up within {timeout:g}s")


def stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM whatever is left of a process group, then SIGKILL it after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # As PID 1 in a container we inherit the orphans: reap them or they never go away.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(-pgid, os.WNOHANG)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class Supervisor:
    def __init__(self, settings: Settings, keys: Keys) -> None:
        self.settings = settings
        self.own_store = settings.store_url is None
        sock = settings.data_dir.resolve() / "store.sock"
        self.store_url = settings.store_url or f"unix:{sock}"
        self.env = settings_env(settings.model_copy(update={"store_url": self.store_url}))
        self.env.update(secret_env(settings, keys))
        self.env["DUCKCAST_SUPERVISED"] = "1"  # service/gunicorn_conf.py: metrics dir is ready
        self.store: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def _start_store(self) -> None:
        cmd = [sys.executable, "-m", "service.cli", "store", "--listen", self.store_url]
        # its own process group: a terminal's Ctrl-C reaches only us, and we stop it last
        self.store = subprocess.Popen(cmd, env=self.env, start_new_session=True)
        wait_for_store(self.store_url, self.store, timeout=60)

    def _start_gunicorn(self) -> subprocess.Popen[bytes]:
        s = self.settings
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            # the settings module inside the package: no checkout or working directory needed
            "python:service.gunicorn_conf",
            "--bind",
            f"{s.host}:{s.port}",
            "--workers",
            str(s.workers),
            "service.api.app:create_app()",
        ]
        # Its own process group, so workers it leaves behind (if the master is killed) can
        # still be found and stopped: an orphaned worker would keep the port and answer 503.
        return subprocess.Popen(cmd, env=self.env, start_new_session=True)

    def _reset_metrics_dir(self) -> None:
        # Before the store starts, not in gunicorn's on_starting (which would delete the files
        # the store already writes): stale files from an earlier run would add old counts.
        path = Path(self.env["PROMETHEUS_MULTIPROC_DIR"])
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)

    def _store_died(self, pid: int) -> None:
        from prometheus_client import multiprocess

        # its live gauges must leave the sums /metrics reports
        multiprocess.mark_process_dead(pid, self.env["PROMETHEUS_MULTIPROC_DIR"])  # type: ignore[no-untyped-call]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        s = self.settings
        if s.workers > 1 and not s.redis_url:
            sys.exit(
                "duckcast: --workers > 1 needs Redis for change events to reach every worker;"
                " set REDIS_URL (e.g. redis://127.0.0.1:6379/0) or use --workers 1"
            )
        self._reset_metrics_dir()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.own_store:
            self._start_store()
        else:
            wait_for_store(self.store_url, None, timeout=60)
        gunicorn = self._start_gunicorn()
        logger.info(
            "serving on %s:%d with %d workers, store at %s",
            s.host,
            s.port,
            s.workers,
            self.store_url,
        )
        restarts = 0
        while not self.stopping and gunicorn.poll() is None:
            time.sleep(0.1)
            if self.store is not None and self.store.poll() is not None and not self.stopping:
                restarts += 1
                self._store_died(self.store.pid)
                logger.error(
                    "store exited with %s; restarting (#%d)", self.store.returncode, restarts
                )
                time.sleep(min(0.1 * restarts, 2.0))
                try:
                    self._start_store()
                except SystemExit as exc:
                    logger.error("%s", exc)
        crashed = not self.stopping
        if crashed:
            logger.error("gunicorn exited with %s; stopping", gunicorn.returncode)
        # shutdown: workers first (they finish requests, end streams), then the store
        if gunicorn.poll() is None:
            gunicorn.terminate()
            try:
                gunicorn.wait(30)
            except subprocess.TimeoutExpired:
                gunicorn.kill()
        stop_group(gunicorn.pid, timeout=25)
        if self.store is not None and self.store.poll() is None:
            self.store.terminate()
            try:
                self.store.wait(60)
            except subprocess.TimeoutExpired:
                self.store.kill()
        logger.info("stopped")
        return 1 if crashed else gunicorn.returncode or 0
