"""The `duckcast` client commands, run as the subprocesses a user would run, against a real
`serve --workers 2`: login, items add/list/done/rm, stats, logout, and `watch` printing an
event made by another process; one-line errors and the documented exit statuses."""

from __future__ import annotations

import json
import queue
import re
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from service.client import Client
from service.client.cli import (
    EXIT_AUTH,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from tests.conftest import free_port
from tests.e2e.client.conftest import PASSWORD, Account
from tests.e2e.conftest import DUCKCAST, DuckcastProcess

pytestmark = pytest.mark.e2e


class Shell:
    """`duckcast ...` with a clean environment: its own XDG_CONFIG_HOME, DUCKCAST_URL set."""

    def __init__(self, config: Path, url: str) -> None:
        self.config = config
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(config.parent),
            "XDG_CONFIG_HOME": str(config),
            "DUCKCAST_URL": url,
        }

    def run(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*DUCKCAST, *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ok(self, *args: str, stdin: str = "") -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == EXIT_OK, (args, done.stdout, done.stderr)
        return done.stdout

    def fails(self, code: int, *args: str, stdin: str = "") -> str:
        """Runs a command that must fail with `code` and one readable line on stderr."""
        done = self.run(*args, stdin=stdin)
        assert done.returncode == code, (args, done.returncode, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert "Traceback" not in done.stderr
        if code != EXIT_USAGE:  # argparse prints its usage line first
            assert len(lines) == 1 and lines[0].startswith("duckcast: "), done.stderr
        return lines[-1]

    def start(self, *args: str) -> Watcher:
        return Watcher(
            subprocess.Popen(
                [*DUCKCAST, *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )


class Watcher:
    """A long-running command whose stdout lines are read by a thread as they come, so a test
    can wait for the next one with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.stderr: IO[str] = proc.stderr
        self.lines: queue.Queue[str] = queue.Queue()
        self._pump = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._pump.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def next_line(self) -> str:
        return self.lines.get(timeout=30)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._pump.join(10)  # the pipe reached EOF when the process ended
        for pipe in (self.proc.stdout, self.proc.stderr):
            assert pipe is not None
            pipe.close()


@pytest.fixture
def shell(tmp_path: Path, service: DuckcastProcess) -> Shell:
    return Shell(tmp_path / "config", service.url)


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        watcher.stop()


def test_a_session_from_login_to_logout(
    shell: Shell, service: DuckcastProcess, account: Account
) -> None:
    """Not logged in: exit 3. login keeps the token in $XDG_CONFIG_HOME/duckcast (0600 file,
    0700 dir); add, list (a table), done, rm and stats do what they say; errors are one line
    with their exit status; logout forgets the token."""
    assert "not logged in" in shell.fails(EXIT_AUTH, "items", "list")
    shell.fails(EXIT_AUTH, "login", "-u", account.username, "--password-stdin", stdin="nope\n")
    out = shell.ok("login", "-u", account.username, "--password-stdin", stdin=PASSWORD + "\n")
    assert out.startswith(f"logged in to {service.url} as {account.username}")
    saved = shell.config / "duckcast" / "credentials.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700
    assert json.loads(saved.read_text())["servers"][service.url]["username"] == account.username

    added = shell.ok("items", "add", "CLI milk", "--priority", "7", "--description", "2 l")
    match = re.fullmatch(r"added #(\d+)  CLI milk  \[active, priority 7\]\n", added)
    assert match, added
    item_id = int(match.group(1))

    table = shell.ok("items", "list", "--mine").splitlines()
    assert table[0].split() == ["ID", "STATUS", "PRI", "UPDATED", "TITLE"]
    row = next(line for line in table[1:] if line.split()[0] == str(item_id))
    assert row.split()[1:3] == ["active", "7"] and row.endswith("CLI milk")
    assert re.fullmatch(r"page 1 of \d+, \d+ items?", table[-1]), table[-1]
    assert str(item_id) not in shell.ok("items", "list", "--mine", "--status", "completed")

    assert shell.ok("items", "done", str(item_id)).startswith(f"completed #{item_id}  CLI milk")
    with Client(service.url, token=account.token) as api:
        assert api.get_item(item_id).status == "completed"
        stats = api.stats()
    assert shell.ok("stats").startswith(f"{stats.total} items: {stats.active} active")

    assert shell.ok("items", "rm", str(item_id)) == f"deleted #{item_id}\n"
    assert "not found" in shell.fails(EXIT_NOT_FOUND, "items", "rm", str(item_id))
    assert "ID must be" in shell.fails(EXIT_USAGE, "items", "done", "twelve")
    assert "priority must be" in shell.fails(EXIT_USAGE, "items", "add", "x", "--priority", "101")

    assert shell.ok("logout") == f"logged out of {service.url}\n"
    assert service.url not in json.loads(saved.read_text())["servers"]
    shell.fails(EXIT_AUTH, "stats")


def test_an_unreachable_server_is_exit_5(shell: Shell) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    line = shell.fails(EXIT_UNREACHABLE, "login", "--url", dead, "-u", "x", "--password-stdin")
    assert "server unavailable" in line


def test_watch_prints_events_made_by_another_process(
    shell: Shell, service: DuckcastProcess, account: Account, watchers: list[Watcher]
) -> None:
    """`watch` (WebSocket, one line per event) and `watch --json --transport sse` (one JSON
    object per line) each print the item this test process creates once they are watching."""
    shell.ok("login", "-u", account.username, "--password-stdin", stdin=PASSWORD + "\n")
    plain = shell.start("watch")
    as_json = shell.start("watch", "--json", "--transport", "sse")
    watchers.extend([plain, as_json])
    for watcher in watchers:
        # "watching ... from seq N" is printed once the start point is fixed: any write after
        # it is an event the watcher must print.
        assert watcher.stderr.readline().startswith(f"watching {service.url}")
    with Client(service.url, token=account.token) as api:
        item = api.create_item("seen by watchers", priority=3)
        api.delete_item(item.id)
    assert re.fullmatch(
        rf" *\d+  created  #{item.id}  seen by watchers  \[active, priority 3\]",
        plain.next_line(),
    )
    assert re.fullmatch(rf" *\d+  deleted  #{item.id}  seen by watchers", plain.next_line())
    created = json.loads(as_json.next_line())
    assert created["type"] == "CREATED" and created["item"]["id"] == item.id
    assert created["item"]["title"] == "seen by watchers"
    deleted = json.loads(as_json.next_line())
    assert (deleted["type"], deleted["deleted_id"], deleted["seq"]) == (
        "DELETED",
        item.id,
        created["seq"] + 1,
    )
