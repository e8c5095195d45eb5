"""Run the locustfile headless against a running Duckcast for N seconds and keep its reports.

    python -m loadtests.locust_run --host http://127.0.0.1:8000 --seconds 30 --out results/run1

Writes `duckcast_stats.csv`, `duckcast_stats_history.csv`, `duckcast_failures.csv`,
`duckcast_exceptions.csv` and `report.html` to `--out`, prints a summary, and exits with
locust's status: 0 when nothing failed, 1 when any request, check or user failed.
(Not named `locust.py`: locust puts the locustfile's folder first on sys.path, where such a
module would shadow the locust package.)
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
SCENARIOS = {
    "mixed": [],  # every user class of the locustfile: writes and subscriptions at once
    "crud": ["JsonUser", "ProtobufUser"],
    "streams": ["SseSubscriber", "WebSocketSubscriber"],
}
PREFIX = "duckcast"


def locust_command(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        args.host.rstrip("/"),
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate or args.users),
        "--run-time",
        f"{args.seconds}s",
        "--csv",
        str(args.out / PREFIX),
        "--html",
        str(args.out / "report.html"),
        "--only-summary",
        "--duckcast-accounts",
        str(args.accounts),
        *SCENARIOS[args.scenario],
    ]


def failures(out: Path) -> list[str]:
    """The failures locust recorded, one line each (its own summary table is printed above)."""
    path = out / f"{PREFIX}_failures.csv"
    if not path.exists():
        return [f"no reports in {out}: locust did not run"]
    with path.open(newline="") as f:
        return [
            f"FAILED {row['Method']} {row['Name']}: {row['Error']} ({row['Occurrences']}x)"
            for row in csv.DictReader(f)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.locust_run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", required=True, help="base URL of a running Duckcast")
    parser.add_argument("--seconds", type=int, default=30, help="run time (default 30)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the reports")
    parser.add_argument("--users", type=int, default=16, help="simulated users (default 16)")
    parser.add_argument("--spawn-rate", type=float, help="users started per second (all at once)")
    parser.add_argument("--accounts", type=int, default=8, help="accounts made before the run")
    parser.add_argument("--scenario", choices=SCENARIOS, default="mixed")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    code = subprocess.run(locust_command(args), cwd=ROOT, env=env, check=False).returncode
    for line in failures(args.out):
        print(line)
    print(f"reports in {args.out}: {PREFIX}_*.csv, report.html (locust exit status {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
