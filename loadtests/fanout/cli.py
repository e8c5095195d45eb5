"""`python -m loadtests.fanout` (`make fanout`): Duckcast's change-event fan-out side by side
with Socket.IO 4.8 + its Redis adapter, in interleaved rounds, against issue 8's targets.

Exit status: 0 when Duckcast meets every target that was measured, 1 when one is missed, 2
when the benchmark could not run. See loadtests/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.fanout import phases, report
from loadtests.fanout.nodes import Subscribers, Writer, node, npm_ci
from loadtests.fanout.phases import Rig, log
from loadtests.fanout.systems import Duckcast, Peer, System, default_duckcast
from loadtests.harness import ROOT, CannotRun, loadavg, raise_nofile

RESULTS_DIR = ROOT / "loadtests" / "results"
PHASES = ("card", "ladder", "overload", "idle")
LADDER = "5,10,20,30,50,75,100,150,200,300,400"


def rates(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of rates: {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("rates must be > 0")
    return sorted(values)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.fanout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--quick", action="store_true", help="smoke: 1 short round of everything, small counts")
    add("--systems", default="duckcast,peer", help="duckcast,peer (default both)")
    add("--duckcast", default=None, help="the duckcast command (default: this venv's)")
    add("--phases", default=",".join(PHASES), help=f"any of {','.join(PHASES)}")
    add("--rounds", type=int, default=None, help="interleaved rounds (3; quick 1)")
    add("--subscribers", type=int, default=None, help="card/ladder/overload (1000; quick 200)")
    add("--rate", type=float, default=100.0, help="card writes/s (100)")
    add("--duration", type=float, default=None, help="card seconds of writes (20; quick 5)")
    add("--probe", type=float, default=None, help="POST probe with 0 subs, s (5; quick 3)")
    add("--drain", type=float, default=15.0, help="max wait for stragglers, s (15)")
    add("--ladder", type=rates, default=None, help=f"writes/s steps ({LADDER})")
    add("--step", type=float, default=None, help="seconds per ladder step (8; quick 3)")
    add("--step-drain", type=float, default=10.0, help="max wait after a step, s (10)")
    add("--overload", type=float, default=800.0, help="overload writes/s (800)")
    add("--overload-duration", type=float, default=None, help="s (10; quick 4)")
    add("--overload-drain", type=float, default=30.0, help="max wait after overload, s (30)")
    add("--idle", type=int, default=None, help="idle subscribers held (10000; quick 1000)")
    add("--idle-hold", type=float, default=None, help="idle hold seconds (10; quick 2)")
    add("--clients", type=int, default=4, help="subscriber processes per system (4)")
    add("--senders", type=int, default=32, help="writer connections (32)")
    add("--connect-concurrency", type=int, default=64, help="handshakes in flight per process")
    add("--trace", action="store_true", help="Duckcast's server-side latency trace (see README)")
    add("--json", type=Path, default=None, help="results file (loadtests/results/fanout-*.json)")
    a = p.parse_args(argv)
    q = a.quick
    a.rounds = a.rounds if a.rounds is not None else (1 if q else 3)
    a.subscribers = a.subscribers if a.subscribers is not None else (200 if q else 1000)
    a.duration = a.duration if a.duration is not None else (5.0 if q else 20.0)
    a.probe = a.probe if a.probe is not None else (3.0 if q else 5.0)
    a.ladder = a.ladder if a.ladder is not None else rates("50,100,200" if q else LADDER)
    a.step = a.step if a.step is not None else (3.0 if q else 8.0)
    a.overload_duration = a.overload_duration or (4.0 if q else 10.0)
    a.idle = a.idle if a.idle is not None else (1000 if q else 10000)
    a.idle_hold = a.idle_hold if a.idle_hold is not None else (2.0 if q else 10.0)
    a.systems = [s for s in a.systems.split(",") if s]
    a.phases = [s for s in a.phases.split(",") if s]
    if not a.systems or set(a.systems) - {"duckcast", "peer"}:
        p.error("--systems: duckcast, peer or both")
    if not a.phases or set(a.phases) - set(PHASES):
        p.error(f"--phases: any of {','.join(PHASES)}")
    if a.rounds < 1 or a.subscribers < 1 or a.clients < 1 or a.senders < 1 or a.idle < 0:
        p.error("--rounds, --subscribers, --clients, --senders must be >= 1")
    if min(a.rate, a.duration, a.probe, a.step, a.overload, a.overload_duration) <= 0:
        p.error("rates and durations must be > 0")
    return a


def make_systems(args: argparse.Namespace) -> list[System]:
    cmd = args.duckcast.split() if args.duckcast else default_duckcast()
    made: dict[str, System] = {"duckcast": Duckcast(cmd, trace=args.trace), "peer": Peer()}
    return [made[name] for name in args.systems]


def start(
    system: System, args: argparse.Namespace, workdir: Path, stack: ExitStack, tag: str
) -> Rig:
    """A fresh instance of `system` with its own subscriber processes and writer."""
    system.start(workdir, stack)
    return Rig(
        system, Subscribers(args.clients, workdir, stack, tag), Writer(workdir, stack, tag), args
    )


def run_round(system: System, args: argparse.Namespace, workdir: Path, tag: str) -> dict[str, Any]:
    out: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "loadavg": [loadavg()]}
    busy = [p for p in ("card", "ladder", "overload") if p in args.phases]
    if busy:
        with ExitStack() as stack:
            rig = start(system, args, workdir, stack, tag)
            if "card" in busy:
                out["card"] = phases.card(rig)
            if "ladder" in busy:
                if "card" not in out:
                    rig.open_subscribers(args.subscribers)
                out["ladder"] = phases.ladder(rig)
            if "overload" in busy:
                out["overload"] = phases.overload(rig)
    if "idle" in args.phases and args.idle > 0:
        with ExitStack() as stack:
            rig = start(system, args, workdir, stack, tag)
            out["idle"] = phases.idle(rig)
    out["loadavg"].append(loadavg())
    return out


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    systems = make_systems(args)
    node()
    if any(s.name == "peer" for s in systems):
        log("npm ci in loadtests/peer (skipped when node_modules is current)")
        npm_ci(workdir / "npm-ci.log")
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": loadavg(),
        },
        "systems": {s.name: s.describe() for s in systems},
        "rounds": {s.name: [] for s in systems},
    }
    for r in range(args.rounds):
        order = systems if r % 2 == 0 else systems[::-1]  # ABBA: neither always goes first
        for system in order:
            log(f"round {r + 1} of {args.rounds}: {system.label}")
            results["rounds"][system.name].append(
                run_round(system, args, workdir, f"r{r + 1}-{system.name}")
            )
    results["machine"]["loadavg_after"] = loadavg()
    results["finished"] = datetime.now(UTC).isoformat()
    return results


def render(results: dict[str, Any], args: argparse.Namespace) -> tuple[str, bool]:
    rounds = results["rounds"]
    duck = report.summarize(rounds["duckcast"]) if "duckcast" in rounds else {}
    peer = report.summarize(rounds["peer"]) if "peer" in rounds else None
    results["summary"] = {"duckcast": duck, "peer": peer}
    lines = []
    systems = results["systems"]
    if "duckcast" in systems:
        d = systems["duckcast"]
        lines.append(f"Duckcast:  {d['command']} @ {d['commit']} ({d['branch']}), REDIS_URL set")
    if "peer" in systems:
        lines.append(f"Socket.IO: {systems['peer']['command']}")
    lines.append(
        f"{args.rounds} interleaved round(s); medians over rounds (losses summed); "
        f"load avg before/after {results['machine']['loadavg_before'][0]:.2f} / "
        f"{results['machine']['loadavg_after'][0]:.2f} on {results['machine']['cpus']} cores"
    )
    lines += report.table(duck, peer, args) if duck or peer else []
    lines.append("per round:")
    for name, rs in rounds.items():
        for i, r in enumerate(rs, 1):
            lines.append(f"  {name} round {i}: " + round_line(r))
    verdicts = report.verdicts(duck, peer) if duck else []
    lines.append("targets (issue 8):")
    for v in verdicts:
        lines.append(f"  {v.word:<7} {v.name}: {v.detail}")
    ok = all(v.met is not False for v in verdicts)
    errors = report.write_errors(rounds)
    if errors:
        lines.append("!! writes that failed or went unanswered (their events are not expected):")
        lines += [f"!!   {e}" for e in errors]
    return "\n".join(lines), ok


def round_line(r: dict[str, Any]) -> str:
    parts = []
    if "card" in r:
        c = r["card"]
        parts.append(
            f"card {c['deliveries_per_s']:,.0f}/s p99 {report.lat(c['latency_ms']['p99'])} "
            f"lost {c['lost']} cpu {c['server_cpu_us_per_delivery']:.1f} µs "
            f"(machine {c['cores_during_writes']['machine']:.2f} cores busy)"
        )
    if "ladder" in r:
        parts.append(f"max {r['ladder']['max_deliveries_per_s']:,.0f}/s")
    if "overload" in r:
        o = r["overload"]
        parts.append(f"overload lag p99 {report.lat(o['lag_ms']['p99'])} dropped {o['dropped']}")
    if "idle" in r:
        parts.append(f"idle {r['idle']['kb_per_subscriber']:.1f} KB ({r['idle']['held']:,})")
    parts.append(f"load {r['loadavg'][0][0]:.1f}->{r['loadavg'][-1][0]:.1f}")
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile()  # children inherit it: thousands of sockets per process

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="fanout-run-", dir="/tmp"))
    keep = False
    try:
        results = run(args, workdir)
    except CannotRun as exc:
        keep = True
        log(f"could not run: {exc}\nlogs kept in {workdir}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; torn down")
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text, ok = render(results, args)
    out = args.json or RESULTS_DIR / f"fanout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(text)
    print(f"results: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
