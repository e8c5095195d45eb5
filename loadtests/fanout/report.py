"""Issue 8's targets against the rounds' medians, and the side-by-side table.

Every figure is the median over the rounds of that system (the rounds interleave the two
systems, so both see the same neighbours' load); losses and duplicates are summed over the
rounds instead: one lost event in any round is a miss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadtests.fanout.phases import TARGET_P99_MS
from loadtests.fanout.stats import median

LAG_BOUND_MS = 5000.0  # "a subscriber more than a few seconds behind is dropped"
POST_GROWTH = 2.0  # POST p99 with the subscribers attached <= 2 x without, + slack
POST_SLACK_MS = 10.0
SUSTAINED_RATIO = 2.0

Rounds = list[dict[str, Any]]


@dataclass
class Verdict:
    name: str
    met: bool | None  # None: not measured (phase or peer not run)
    detail: str

    @property
    def word(self) -> str:
        return {True: "MET", False: "MISSED", None: "n/a"}[self.met]


def pick(rounds: Rounds, phase: str, get: Callable[[dict[str, Any]], float]) -> float:
    return median([get(r[phase]) for r in rounds if phase in r])


def total(rounds: Rounds, phase: str, get: Callable[[dict[str, Any]], float]) -> float:
    return float(sum(get(r[phase]) for r in rounds if phase in r))


def has(rounds: Rounds, phase: str) -> bool:
    return any(phase in r for r in rounds)


def summarize(rounds: Rounds) -> dict[str, float]:
    """The medians (and sums) the table and the targets use, for one system."""
    s: dict[str, float] = {}
    if has(rounds, "card"):
        s |= {
            "deliveries_per_s": pick(rounds, "card", lambda c: c["deliveries_per_s"]),
            "writes_per_s": pick(rounds, "card", lambda c: c["writes_per_s"]),
            "offered_per_s": pick(rounds, "card", lambda c: c["offered_per_s"]),
            "p50": pick(rounds, "card", lambda c: c["latency_ms"]["p50"]),
            "p95": pick(rounds, "card", lambda c: c["latency_ms"]["p95"]),
            "p99": pick(rounds, "card", lambda c: c["latency_ms"]["p99"]),
            "lost": total(rounds, "card", lambda c: c["lost"]),
            "duplicated": total(rounds, "card", lambda c: c["duplicated"]),
            "out_of_order": total(rounds, "card", lambda c: c["out_of_order"]),
            "unopened": total(rounds, "card", lambda c: c["open"]["requested"] - c["subscribers"]),
            "dropped": total(rounds, "card", lambda c: sum(c["ends"].values())),
            "cpu_us": pick(rounds, "card", lambda c: c["server_cpu_us_per_delivery"]),
            "client_cpu_us": pick(rounds, "card", lambda c: c["client_cpu_us_per_delivery"]),
            "post_p50_0": pick(rounds, "card", lambda c: c["post_without_subscribers"]["p50"]),
            "post_p99_0": pick(rounds, "card", lambda c: c["post_without_subscribers"]["p99"]),
            "post_p50_n": pick(rounds, "card", lambda c: c["writes"]["p50"]),
            "post_p99_n": pick(rounds, "card", lambda c: c["writes"]["p99"]),
            "machine_cores": pick(rounds, "card", lambda c: c["cores_during_writes"]["machine"]),
            "server_cores": pick(rounds, "card", lambda c: c["cores_during_writes"]["server"]),
            "loadavg": pick(rounds, "card", lambda c: c["loadavg"][0][0]),
        }
    if has(rounds, "ladder"):
        s["max_sustained"] = pick(rounds, "ladder", lambda x: x["max_deliveries_per_s"])
        s["max_rate"] = pick(rounds, "ladder", lambda x: x["max_rate"])
    if has(rounds, "overload"):
        s |= {
            "overload_p50": pick(rounds, "overload", lambda o: o["lag_ms"]["p50"]),
            "overload_p99": pick(rounds, "overload", lambda o: o["lag_ms"]["p99"]),
            "overload_delivered_per_s": pick(rounds, "overload", lambda o: o["deliveries_per_s"]),
            "overload_writes_per_s": pick(rounds, "overload", lambda o: o["writes_per_s"]),
            "overload_dropped": pick(rounds, "overload", lambda o: o["dropped"]),
            "overload_undocumented": total(
                rounds, "overload", lambda o: o["dropped"] - o["dropped_documented"]
            ),
            # deliveries still missing when the measurement ended, after any resume
            "overload_owed": total(
                rounds,
                "overload",
                lambda o: o["after_resume"]["lost"] if "after_resume" in o else o["lost"],
            ),
            "overload_post_p99": pick(rounds, "overload", lambda o: o["writes"]["p99"]),
        }
    if has(rounds, "idle"):
        s["idle_kb"] = pick(rounds, "idle", lambda i: i["kb_per_subscriber"])
        s["idle_held"] = pick(rounds, "idle", lambda i: i["held"])
    return s


def versus(
    duck: dict[str, float],
    peer: dict[str, float] | None,
    name: str,
    key: str,
    unit: str,
    holds: Callable[[float, float], bool],
) -> Verdict:
    """A target relative to the peer: n/a when the peer did not run that phase."""
    detail = unit.format(duck[key])
    if not peer or key not in peer:
        return Verdict(name, None, detail)
    return Verdict(name, holds(duck[key], peer[key]), f"{detail} vs {unit.format(peer[key])}")


def verdicts(duck: dict[str, float], peer: dict[str, float] | None) -> list[Verdict]:
    out = []
    if "p99" in duck:
        ok = (
            duck["p99"] < TARGET_P99_MS
            and duck["lost"] == 0
            and duck["duplicated"] == 0
            and duck["unopened"] == 0
        )
        out.append(
            Verdict(
                "card load: p99 < 100 ms, every event delivered",
                ok,
                f"p99 {duck['p99']:.1f} ms, lost {duck['lost']:.0f}, dup {duck['duplicated']:.0f}",
            )
        )
        limit = POST_GROWTH * duck["post_p99_0"] + POST_SLACK_MS
        out.append(
            Verdict(
                "POST latency does not grow with subscribers",
                duck["post_p99_n"] <= limit,
                f"p99 {duck['post_p99_0']:.1f} ms -> {duck['post_p99_n']:.1f} ms "
                f"(limit {limit:.1f})",
            )
        )
    if "max_sustained" in duck:
        # no passing step at all is a miss, even against a peer that had none either
        out.append(
            versus(
                duck,
                peer,
                "max sustained deliveries/s >= 2x the peer's",
                "max_sustained",
                "{:,.0f}/s",
                lambda d, p: d > 0 and d >= SUSTAINED_RATIO * p,
            )
        )
    if "cpu_us" in duck:
        out.append(
            versus(
                duck,
                peer,
                "server CPU per delivery <= the peer's",
                "cpu_us",
                "{:.1f} µs",
                lambda d, p: d <= p,
            )
        )
    if "idle_kb" in duck:
        out.append(
            versus(
                duck,
                peer,
                "idle RSS per subscriber <= the peer's",
                "idle_kb",
                "{:.1f} KB",
                lambda d, p: d <= p,
            )
        )
    if "overload_p99" in duck:
        ok = (
            duck["overload_p99"] <= LAG_BOUND_MS
            and duck["overload_undocumented"] == 0
            and duck["overload_owed"] == 0
        )
        out.append(
            Verdict(
                "overload: lag bounded, slow subscribers dropped (4008/overflow), all delivered",
                ok,
                f"lag p99 {duck['overload_p99']:.0f} ms (bound {LAG_BOUND_MS:.0f}), dropped "
                f"{duck['overload_dropped']:.0f}, other closes "
                f"{duck['overload_undocumented']:.0f}, still owed at the end "
                f"{duck['overload_owed']:.0f}",
            )
        )
    return out


def k(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x / 1000:,.1f}k" if x >= 10_000 else f"{x:,.0f}"


def lat(x: float) -> str:
    """A latency with its unit: ms below a second, s above."""
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "never"
    return f"{x / 1000:.2f} s" if x >= 1000 else f"{x:.1f} ms"


WIDTH = 30


def table(duck: dict[str, float], peer: dict[str, float] | None, args: Any) -> list[str]:
    p = peer or {}
    n = args.subscribers

    def row(label: str, show: Callable[[dict[str, float]], str], key: str) -> str | None:
        if key not in duck and key not in p:
            return None
        left = show(duck) if key in duck else "-"
        right = show(p) if key in p else "-"
        return f"{label:<44}{left:>{WIDTH}}{right:>{WIDTH}}"

    rows = [
        f"{'':<44}{'Duckcast':>{WIDTH}}{'Socket.IO':>{WIDTH}}",
        row(
            f"{n:,} subs x {args.rate:g} writes/s: deliveries/s",
            lambda s: f"{k(s['deliveries_per_s'])} of {k(s['offered_per_s'])}",
            "deliveries_per_s",
        ),
        row(
            "  writes/s answered",
            lambda s: f"{s['writes_per_s']:,.1f} of {args.rate:g}",
            "writes_per_s",
        ),
        row(
            "  commit->receipt p50 / p95 / p99",
            lambda s: f"{lat(s['p50'])} / {lat(s['p95'])} / {lat(s['p99'])}",
            "p99",
        ),
        row(
            "  lost / duplicated / out of order",
            lambda s: f"{s['lost']:.0f} / {s['duplicated']:.0f} / {s['out_of_order']:.0f}",
            "lost",
        ),
        row("  server CPU per delivery", lambda s: f"{s['cpu_us']:.1f} µs", "cpu_us"),
        row("  client CPU per delivery", lambda s: f"{s['client_cpu_us']:.1f} µs", "cpu_us"),
        row(
            "  POST p50 / p99, no subscriber",
            lambda s: f"{lat(s['post_p50_0'])} / {lat(s['post_p99_0'])}",
            "post_p99_0",
        ),
        row(
            f"  POST p50 / p99, {n:,} subscribers",
            lambda s: f"{lat(s['post_p50_n'])} / {lat(s['post_p99_n'])}",
            "post_p99_n",
        ),
        row(
            "  machine busy cores (servers') while writing",
            lambda s: f"{s['machine_cores']:.2f} ({s['server_cores']:.2f})",
            "machine_cores",
        ),
        row(
            "  load average (1 min) at the start",
            lambda s: f"{s['loadavg']:.1f}",
            "loadavg",
        ),
        row(
            "max sustained deliveries/s, p99 < 100 ms",
            lambda s: f"{k(s['max_sustained'])} ({s['max_rate']:g} writes/s)",
            "max_sustained",
        ),
        row(
            f"idle RSS per subscriber ({args.idle:,} held)",
            lambda s: f"{s['idle_kb']:.1f} KB",
            "idle_kb",
        ),
        row(
            f"overload {args.overload:g} writes/s: lag p50 / p99",
            lambda s: f"{lat(s['overload_p50'])} / {lat(s['overload_p99'])}",
            "overload_p99",
        ),
        row(
            "  writes/s answered",
            lambda s: f"{s['overload_writes_per_s']:,.1f} of {args.overload:g}",
            "overload_writes_per_s",
        ),
        row(
            "  deliveries/s; subscribers dropped",
            lambda s: f"{k(s['overload_delivered_per_s'])}; {s['overload_dropped']:.0f}",
            "overload_p99",
        ),
        row(
            "  owed at the end (after resume); POST p99",
            lambda s: f"{s['overload_owed']:.0f}; {lat(s['overload_post_p99'])}",
            "overload_p99",
        ),
    ]
    return [r for r in rows if r is not None]


def write_errors(rounds: dict[str, Rounds]) -> list[str]:
    """Writes that failed or went unanswered, per system, round and phase: the events they
    would have made are not expected, so the figures describe fewer writes than asked for."""
    out = []
    for name, rs in rounds.items():
        for i, r in enumerate(rs, 1):
            measured = [("card", r.get("card")), ("overload", r.get("overload"))]
            measured += [
                (f"ladder {m['rate']:g}/s", m) for m in r.get("ladder", {}).get("steps", [])
            ]
            for phase, m in measured:
                if m and m["writes"]["errors"]:
                    out.append(f"{name} round {i} {phase}: {m['writes']['errors']}")
    return out
