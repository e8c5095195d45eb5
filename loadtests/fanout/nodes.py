"""The node client processes (loadtests/clients/), driven over their stdin/stdout, and the
peer's npm install.

Each client is a process group of its own; one JSON command per line goes in, one JSON answer
per line comes out. Every wait for an answer is bounded; a client that dies or does not answer
in time makes the run fail with exit 2 rather than hang.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from loadtests.harness import ROOT, CannotRun, ProcessGroup, child_env

CLIENTS = ROOT / "loadtests" / "clients"
PEER = ROOT / "loadtests" / "peer"
NODE_MAJOR = 20


def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        raise CannotRun("node is not installed (apt-get install -y nodejs npm)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    major = int(version.stdout.strip().lstrip("v").split(".")[0] or 0)
    if major < NODE_MAJOR:
        raise CannotRun(f"node {version.stdout.strip()} is too old: the clients need >= 20")
    return exe


def npm_ci(log: Path) -> None:
    """`npm ci` in loadtests/peer unless node_modules already holds exactly package-lock.json."""
    lock = (PEER / "package-lock.json").read_bytes()
    stamp = PEER / "node_modules" / ".installed-lock-sha256"
    digest = hashlib.sha256(lock).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise CannotRun("npm is not installed (apt-get install -y npm)")
    with log.open("wb") as out:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=PEER,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    if done.returncode != 0:
        raise CannotRun(f"npm ci failed in {PEER} ({done.returncode}); log: {log}")
    stamp.write_text(digest)


def peer_versions() -> dict[str, str]:
    out = {}
    for name in ("socket.io", "@socket.io/redis-adapter", "redis", "socket.io-client"):
        meta = PEER / "node_modules" / name / "package.json"
        if meta.exists():
            out[name] = json.loads(meta.read_text())["version"]
    return out


class NodeClient:
    """One node process speaking JSON lines on stdin/stdout."""

    def __init__(self, name: str, script: str, workdir: Path, stack: ExitStack) -> None:
        self.name = name
        self.group = ProcessGroup(
            name, [node(), str(CLIENTS / script)], child_env(), workdir / f"{name}.log", pipes=True
        )
        stack.callback(self.group.stop, 10.0)
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.group.pid

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.group.stdin.write(json.dumps(message).encode() + b"\n")
            self.group.stdin.flush()
        except OSError as exc:
            raise CannotRun(f"{self.name} is gone ({exc}):\n{self.group.tail()}") from exc

    def receive(self, deadline: float, what: str) -> dict[str, Any]:
        fd = self.group.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CannotRun(f"{self.name} did not answer {what!r} in time")
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise CannotRun(f"{self.name} exited during {what!r}:\n{self.group.tail()}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise CannotRun(f"{self.name} failed {what!r}: {answer.get('error')}")
        result: dict[str, Any] = answer["result"]
        return result

    def call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.send(message)
        return self.receive(time.monotonic() + timeout, message["cmd"])


class Subscribers:
    """`n` subscriber processes; subscriptions are spread evenly over them."""

    def __init__(self, n: int, workdir: Path, stack: ExitStack, tag: str) -> None:
        self.clients = [
            NodeClient(f"{tag}-subscribers{i}", "subscribers.js", workdir, stack) for i in range(n)
        ]

    def pids(self) -> list[int]:
        return [c.pid for c in self.clients]

    def ask(self, messages: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        for client, message in zip(self.clients, messages, strict=True):
            client.send(message)
        deadline = time.monotonic() + timeout
        return [c.receive(deadline, m["cmd"]) for c, m in zip(self.clients, messages, strict=True)]

    def ask_all(self, message: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
        return self.ask([message] * len(self.clients), timeout)

    def open(
        self,
        kind: str,
        n: int,
        targets: list[dict[str, Any]],
        token: str,
        concurrency: int = 64,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        k = len(self.clients)
        shares = [n // k + (i < n % k) for i in range(k)]
        messages = [
            {
                "cmd": "open",
                "kind": kind,
                "n": share,
                "targets": targets,
                "token": token,
                "concurrency": concurrency,
                "timeout_ms": timeout * 1000,
            }
            for share in shares
        ]
        # every connection has its own timeout; allow for the queue behind it
        budget = timeout * (1 + n / max(1, concurrency * k)) + 60
        answers = self.ask(messages, budget)
        failures: Counter[str] = Counter()
        for a in answers:
            failures.update(a["failures"])
        return {
            "opened": sum(a["opened"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "failures": dict(failures),
            "seconds": max(a["ms"] for a in answers) / 1000,
            **self.merge_status(answers),
        }

    @staticmethod
    def merge_status(answers: list[dict[str, Any]]) -> dict[str, Any]:
        closed: Counter[str] = Counter()
        ends: Counter[str] = Counter()
        for a in answers:
            closed.update(a["closed"])
            ends.update(a["ends"])
        return {
            "held": sum(a["held"] for a in answers),
            "open": sum(a["open"] for a in answers),
            "closed": dict(closed),
            "ends": dict(ends),
            "client_rss_kb": [a["rss_kb"] for a in answers],
        }

    def status(self) -> dict[str, Any]:
        return self.merge_status(self.ask_all({"cmd": "status"}, 30))

    def arm(self, lo: int) -> None:
        self.ask_all({"cmd": "arm", "lo": lo}, 30)

    def drain(self, hi: int, expected: int, timeout: float) -> dict[str, Any]:
        """Wait until every open subscriber has `expected` distinct seqs in (lo, hi]."""
        message = {"cmd": "drain", "hi": hi, "expected": expected, "timeout_ms": timeout * 1000}
        answers = self.ask_all(message, timeout + 120)
        window: dict[str, Counter[str]] = {}
        for a in answers:
            for kind, counts in a["window"].items():
                window.setdefault(kind, Counter()).update(counts)
        receipts = [a["first_receipt"] for a in answers if a["first_receipt"] is not None]
        lasts = [a["last_receipt"] for a in answers if a["last_receipt"] is not None]
        return {
            **self.merge_status(answers),
            "expected": expected,
            "window": {k: dict(v) for k, v in window.items()},
            "missing_open": sum(a["missing_open"] for a in answers),
            "histograms": [a["latency"] for a in answers],
            "first_receipt": min(receipts, default=None),
            "last_receipt": max(lasts, default=None),
            "drained": all(a["drained"] for a in answers),
        }

    def resume(self, concurrency: int = 64, timeout: float = 15.0) -> dict[str, Any]:
        answers = self.ask_all(
            {"cmd": "resume", "concurrency": concurrency, "timeout_ms": timeout * 1000},
            timeout * 4 + 60,
        )
        return {k: sum(a[k] for a in answers) for k in ("resumable", "opened", "failed")}

    def reset(self) -> None:
        self.ask_all({"cmd": "reset"}, 60)


class Writer:
    """The node writer process (loadtests/clients/writer.js)."""

    def __init__(self, workdir: Path, stack: ExitStack, tag: str) -> None:
        self.client = NodeClient(f"{tag}-writer", "writer.js", workdir, stack)

    @property
    def pid(self) -> int:
        return self.client.pid

    def run(
        self, spec: dict[str, Any], rate: float, count: int, senders: int, seq_start: int
    ) -> dict[str, Any]:
        message = {
            "cmd": "run",
            **spec,
            "rate": rate,
            "count": count,
            "senders": senders,
            "seq_start": seq_start,
        }
        return self.client.call(message, count / rate + 300)
