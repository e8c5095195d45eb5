"""A 30-second headless locust run of every user class of loadtests/locustfile.py (JSON and
protobuf CRUD, SSE and WebSocket subscribers, at once) against gunicorn with several workers
and real Redis ends with zero failures."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.e2e.conftest import Deployment, bad_log_lines

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def stats_rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def test_a_30_second_mixed_run_has_no_failures(
    deployment: Deployment, redis_server: RedisServer, tmp_path: Path
) -> None:
    """`python -m loadtests.locust_run` for 30 s against `serve --workers 3` with Redis, every
    user class at once (JSON and protobuf CRUD, SSE and WebSocket subscribers): exit status 0,
    zero failures in the CSV, every kind of request made, both subscriber kinds received
    creates with their latency, and the reports are where the command says."""
    api = deployment.serve(workers=3, REDIS_URL=redis_server.url)
    out = tmp_path / "locust"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.locust_run",
            *(
                "--host",
                api.url,
                "--seconds",
                "30",
                "--out",
                str(out),
                "--users",
                "16",
                "--accounts",
                "4",
            ),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = stats_rows(out / "duckcast_stats.csv")
    total = rows[("", "Aggregated")]
    assert total["Failure Count"] == "0" and int(total["Request Count"]) > 100
    for fmt in ("json", "protobuf"):
        for method, name in [
            ("POST", "/api/items"),
            ("GET", "/api/items?limit=20"),
            ("GET", "/api/items/[id]"),
            ("GET", "/api/stats"),
        ]:
            assert int(rows[(method, f"{name} [{fmt}]")]["Request Count"]) > 0, (method, fmt)
    for kind in ("SSE", "WS"):
        assert int(rows[(kind, "connect")]["Request Count"]) >= 1
        created = rows[(kind, "item_created")]
        assert int(created["Request Count"]) > 0 and float(created["Median Response Time"]) > 0
        for bad in ("seq gap", "seq repeated", "reset", "stream error"):
            assert (kind, bad) not in rows
    with (out / "duckcast_failures.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == []
    assert "locust" in (out / "report.html").read_text().lower()
    assert bad_log_lines(api.logs()) == []
