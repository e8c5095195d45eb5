"""What one round measures on one running system (see loadtests/README.md for the figures).

- `card`: POST latency with no subscriber, then `--subscribers` subscribers and `--rate`
  writes/s for `--duration` s: deliveries/s, commit->receipt latency, lost/duplicated/out of
  order, server CPU per delivery, POST latency with the subscribers attached.
- `ladder`: the same subscribers, `--step` s at each rate of `--ladder` in turn; the highest
  step with p99 < 100 ms and nothing lost, duplicated or dropped is the sustained maximum.
  A failed step is tried once more (the machine is shared), a second failure ends the ladder.
- `overload`: fresh subscribers, `--overload` writes/s: how late deliveries get (deliveries
  still owed to connected subscribers count as infinitely late), who was dropped and why; then
  the dropped subscribers resume from their last seq and must end up with every event.
- `idle`: RSS of the server processes before and after opening `--idle` subscribers.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from loadtests.fanout import hops
from loadtests.fanout.nodes import Subscribers, Writer
from loadtests.fanout.stats import Latency
from loadtests.fanout.systems import System
from loadtests.harness import (
    CannotRun,
    busy_cpu_seconds,
    cpu_seconds,
    loadavg,
    rss_bytes,
    wait_until,
)

TARGET_P99_MS = 100.0
SETTLE_S = 1.0  # after opening subscribers, before the clock starts
DOCUMENTED_DROPS = ("ws close 4008", "sse overflow")


def log(msg: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Rig:
    system: System
    subs: Subscribers
    writer: Writer
    args: argparse.Namespace

    def snapshot(self) -> dict[str, float]:
        return {
            "server": sum(cpu_seconds(p) for p in self.system.server_pids()),
            "clients": sum(cpu_seconds(p) for p in self.subs.pids()),
            "writer": cpu_seconds(self.writer.pid),
            "machine": busy_cpu_seconds(),
            "wall": time.monotonic(),
        }

    def write(self, rate: float, seconds: float, lo: int | None = None) -> dict[str, Any]:
        """`rate` writes/s for `seconds`; `lo` is the system's seq before them."""
        lo = self.system.seq() if lo is None else lo
        spec = {**self.system.write_spec(), "token": self.system.token}
        count = max(1, round(rate * seconds))
        # No more connections than writes per second: each is used at least every second, so
        # none sits idle past gunicorn's 5 s keep-alive and gets closed under a write (seen:
        # ECONNRESET at 5 writes/s over 32 connections).
        senders = max(1, min(self.args.senders, math.ceil(rate)))
        writes = self.writer.run(spec, rate, count, senders, lo + 1)
        writes["lo"] = lo
        return writes

    def open_subscribers(self, n: int) -> dict[str, Any]:
        opened: dict[str, Any] = {}
        for kind, k, targets in self.system.subscriptions(n):
            if k:
                opened[kind] = self.subs.open(
                    kind, k, targets, self.system.token, self.args.connect_concurrency
                )
        status = self.subs.status()
        if status["open"] == 0 and n:
            raise CannotRun(f"no subscriber could connect: {opened}")
        time.sleep(SETTLE_S)
        return {"requested": n, "by_kind": opened, **status}

    def wait_quiet(self, limit: float = 30.0) -> None:
        """Until the servers use < 0.15 cores for a second (backlog of the last step gone)."""

        def quiet() -> bool:
            pids = self.system.server_pids()
            c0 = sum(cpu_seconds(p) for p in pids)
            time.sleep(1.0)
            return sum(cpu_seconds(p) for p in pids) - c0 < 0.15

        wait_until(quiet, limit, 0)


def server_trace(rig: Rig) -> dict[str, list[dict[str, Any]]]:
    trace = getattr(rig.system, "trace", None)
    return trace() if trace is not None else {}


def trace_delta(
    before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, float]]:
    """Summaries of what the workers' trace histograms gained between two readings."""
    out = {}
    for name, hists in after.items():
        gained: dict[str, float] = {}
        for h in hists:
            for i, c in h["buckets"].items():
                gained[i] = gained.get(i, 0) + c
        for h in before.get(name, []):
            for i, c in h["buckets"].items():
                gained[i] = gained.get(i, 0) - c
        n = sum(gained.values())
        lat = Latency([{"buckets": gained, "n": n, "max": None}])
        per_worker = [h["n"] - b["n"] for h, b in zip(hists, before.get(name, []), strict=False)]
        out[name] = {**lat.summary(), "p99.9": lat.percentile(99.9), "n_by_worker": per_worker}
    return out


def server_histograms(rig: Rig) -> dict[str, dict[float, float]]:
    histograms = getattr(rig.system, "histograms", None)
    return histograms() if histograms is not None else {}


def histogram_delta(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
) -> dict[str, dict[str, float]]:
    """p50/p99 (the bucket's upper bound, ms) of what each /metrics histogram gained."""
    out = {}
    for name, cum in after.items():
        gained = sorted((le, c - before.get(name, {}).get(le, 0.0)) for le, c in cum.items())
        total = gained[-1][1] if gained else 0.0
        if total > 0:
            out[name] = {"n": total} | {k: upper(gained, q) for k, q in QUANTILES.items()}
    return out


QUANTILES = {"p50": 50.0, "p99": 99.0, "p99.9": 99.9}


def upper(cumulative: list[tuple[float, float]], q: float) -> float:
    """The upper bound (ms) of the bucket holding the q-th percentile."""
    total = cumulative[-1][1]
    return next(le * 1000 for le, c in cumulative if c >= q / 100 * total)


def ack_summary(writes: dict[str, Any]) -> dict[str, Any]:
    return {
        **Latency([writes["ack"]]).summary(),
        "ok": writes["ok"],
        "planned": writes["planned"],
        "errors": writes["errors"],
    }


def measure(rig: Rig, rate: float, seconds: float, drain: float) -> dict[str, Any]:
    """Write at `rate` for `seconds` to the open subscribers and count what they got."""
    held = rig.subs.status()["open"]
    lo = rig.system.seq()
    rig.subs.arm(lo)
    load0 = loadavg()
    trace0 = server_trace(rig)
    hist0 = server_histograms(rig)
    t0 = rig.snapshot()
    writes = rig.write(rate, seconds, lo)
    t1 = rig.snapshot()
    hi, expected = rig.system.window_after(lo, writes)
    got = rig.subs.drain(hi, expected, drain)
    t2 = rig.snapshot()
    if trace0:
        time.sleep(1.2)  # the workers rewrite their trace every second
    trace = trace_delta(trace0, server_trace(rig)) if trace0 else {}
    trace.update(histogram_delta(hist0, server_histograms(rig)))
    window = got["window"]
    delivered = sum(k["unique"] for k in window.values())
    lost = sum(k["lost"] for k in window.values())
    span = seconds
    if got["last_receipt"] is not None:
        span = max(seconds, (got["last_receipt"] - writes["started_at"]) / 1000)
    wall = max(1e-9, t1["wall"] - t0["wall"])
    cores = {k: (t1[k] - t0[k]) / wall for k in ("server", "clients", "writer", "machine")}
    return {
        "rate": rate,
        "seconds": seconds,
        "subscribers": held,
        "seq": [lo, hi],
        "events": expected,
        "offered_per_s": rate * held,
        "expected_deliveries": expected * held,
        "delivered": delivered,
        "deliveries_per_s": delivered / span,
        "delivery_span_s": span,
        "lost": lost,
        "duplicated": sum(k["dups"] for k in window.values()),
        "out_of_order": sum(k["out_of_order"] for k in window.values()),
        "by_kind": window,
        "closed": got["closed"],
        "ends": got["ends"],
        "drained": got["drained"],
        "latency_ms": Latency(got["histograms"]).summary(),
        "lag_ms": Latency(got["histograms"], missing=got["missing_open"]).summary(),
        "writes": ack_summary(writes),
        "write_seconds": writes["seconds"],
        "writes_per_s": writes["ok"] / max(seconds, writes["seconds"]),
        "server_cpu_us_per_delivery": (t2["server"] - t0["server"]) / max(1, delivered) * 1e6,
        "client_cpu_us_per_delivery": (t2["clients"] - t0["clients"]) / max(1, delivered) * 1e6,
        "cores_during_writes": cores,
        "loadavg": [load0, loadavg()],
        "server_trace_ms": trace,
    }


def card(rig: Rig) -> dict[str, Any]:
    a = rig.args
    log(f"{rig.system.label}: POST latency with no subscriber ({a.rate:g}/s for {a.probe:g}s)")
    hist0 = server_histograms(rig)
    t0 = time.monotonic()
    probe = ack_summary(rig.write(a.rate, a.probe))
    probe["server_trace_ms"] = histogram_delta(hist0, server_histograms(rig))
    probe["post_hops_ms"] = post_hops(rig, "probe", t0, time.monotonic())
    for name, h in probe["server_trace_ms"].items():
        log(
            f"{rig.system.label}:   probe {name:<24} n {h['n']:>6,.0f}  p50 {h['p50']:7.2f}  "
            f"p99 {h['p99']:7.2f} ms"
        )
    opened = rig.open_subscribers(a.subscribers)
    log(
        f"{rig.system.label}: {opened['open']} subscribers open; "
        f"{a.rate:g} writes/s for {a.duration:g}s"
    )
    t0 = time.monotonic()
    result = measure(rig, a.rate, a.duration, a.drain)
    result["post_hops_ms"] = post_hops(rig, "card", t0, t0 + a.duration + 1.0)
    result["open"] = opened
    result["post_without_subscribers"] = probe
    log(
        f"{rig.system.label}: {result['deliveries_per_s']:,.0f} deliveries/s, p99 "
        f"{result['latency_ms']['p99']:.1f} ms, lost {result['lost']}, "
        f"dup {result['duplicated']}"
    )
    log_trace(rig, result)
    return result


def post_hops(rig: Rig, label: str, t0: float, t1: float) -> dict[str, Any]:
    """--trace: where the time of the POSTs made in [t0, t1] went (loadtests/fanout/hops.py)."""
    directory = getattr(rig.system, "trace_dir", None)
    if directory is None:
        return {}
    time.sleep(1.2)  # the processes write their rows every second
    summary = hops.summarize(hops.join(hops.load(directory), t0, t1))
    for line in hops.lines(f"{rig.system.label}: {label} POST hops", summary):
        log(line)
    return summary


def log_trace(rig: Rig, m: dict[str, Any]) -> None:
    for name, h in m["server_trace_ms"].items():
        log(
            f"{rig.system.label}:   trace {name:<24} n {h['n']:>9,.0f}  p50 {h['p50']:8.2f}  "
            f"p99 {h['p99']:8.2f}  p99.9 {h['p99.9']:8.2f} ms"
        )


def step_ok(m: dict[str, Any]) -> bool:
    return bool(
        m["latency_ms"]["p99"] < TARGET_P99_MS
        and m["lost"] == 0
        and m["duplicated"] == 0
        and not m["ends"]
        and m["drained"]
    )


def ensure_subscribers(rig: Rig) -> None:
    """A clean set of `--subscribers` open subscribers on a quiet server."""
    rig.wait_quiet()
    status = rig.subs.status()
    if status["open"] < rig.args.subscribers or status["ends"]:
        rig.subs.reset()
        rig.wait_quiet()
        rig.open_subscribers(rig.args.subscribers)


def ladder(rig: Rig) -> dict[str, Any]:
    a = rig.args
    steps = []
    best: dict[str, Any] | None = None
    for rate in a.ladder:
        ensure_subscribers(rig)
        for attempt in (1, 2):
            m = measure(rig, rate, a.step, a.step_drain)
            m["ok"] = step_ok(m)
            m["attempt"] = attempt
            steps.append(m)
            log(
                f"{rig.system.label}: ladder {rate:g} writes/s: "
                f"{m['deliveries_per_s']:,.0f} deliveries/s, p99 {m['latency_ms']['p99']:.1f} ms, "
                f"lost {m['lost']}, dropped {sum(m['ends'].values())}: "
                + ("ok" if m["ok"] else "missed")
            )
            log_trace(rig, m)
            if m["ok"]:
                break
            ensure_subscribers(rig)
        if not m["ok"]:
            break
        best = m
    return {
        "max_deliveries_per_s": best["deliveries_per_s"] if best else 0.0,
        "max_rate": best["rate"] if best else 0.0,
        "steps": steps,
    }


def overload(rig: Rig) -> dict[str, Any]:
    a = rig.args
    rig.wait_quiet()
    rig.subs.reset()
    rig.wait_quiet()
    rig.open_subscribers(a.subscribers)
    log(f"{rig.system.label}: overload, {a.overload:g} writes/s for {a.overload_duration:g}s")
    m = measure(rig, a.overload, a.overload_duration, a.overload_drain)
    drops = m["ends"]
    m["dropped"] = sum(drops.values())
    m["dropped_documented"] = sum(n for why, n in drops.items() if why in DOCUMENTED_DROPS)
    if rig.system.resumable and m["dropped"]:
        m["resume"] = rig.subs.resume(a.connect_concurrency)
        after = rig.subs.drain(m["seq"][1], m["events"], a.overload_drain)
        m["after_resume"] = {
            "lost": sum(k["lost"] for k in after["window"].values()),
            "duplicated": sum(k["dups"] for k in after["window"].values()),
            "open": after["open"],
            "drained": after["drained"],
            "ends": after["ends"],
        }
    log(
        f"{rig.system.label}: overload lag p99 {m['lag_ms']['p99']:.0f} ms, "
        f"dropped {m['dropped']} ({drops}), after resume: {m.get('after_resume')}"
    )
    return m


def server_rss(rig: Rig) -> int:
    """KiB resident in all the server processes."""
    try:
        return sum(rss_bytes(p) for p in rig.system.server_pids()) // 1024
    except ProcessLookupError as exc:
        raise CannotRun(f"a server process exited during the idle phase: {exc}") from exc


def settled_rss(rig: Rig, limit: float = 15.0) -> int:
    """Server RSS once two readings half a second apart agree within 0.5%."""
    last = [server_rss(rig)]

    def steady() -> bool:
        time.sleep(0.5)
        now = server_rss(rig)
        before, last[0] = last[0], now
        return abs(now - before) <= 0.005 * max(before, 1)

    wait_until(steady, limit, 0)
    return last[0]


def idle(rig: Rig) -> dict[str, Any]:
    a = rig.args
    # A few subscriptions of each kind first, then closed: lazy imports and first-use caches
    # belong to the baseline, not to the subscribers.
    for kind, k, targets in rig.system.subscriptions(16):
        rig.subs.open(kind, k, targets, rig.system.token, 8)
    rig.subs.reset()
    rig.wait_quiet()
    before = settled_rss(rig)
    steps = []
    rss, held = before, 0
    for kind, k, targets in rig.system.subscriptions(a.idle):
        log(f"{rig.system.label}: opening {k:,} idle {kind} subscribers")
        opened = rig.subs.open(
            kind, k, targets, rig.system.token, a.connect_concurrency, timeout=30
        )
        now = settled_rss(rig)
        steps.append(
            {
                "kind": kind,
                "requested": k,
                "opened": opened["opened"],
                "failures": opened["failures"],
                "seconds": opened["seconds"],
                "kb_per_subscriber": (now - rss) / max(1, opened["opened"]),
            }
        )
        rss, held = now, held + opened["opened"]
    log(f"{rig.system.label}: holding {held:,} idle subscribers for {a.idle_hold:g}s")
    time.sleep(a.idle_hold)
    status = rig.subs.status()
    after = server_rss(rig)
    return {
        "requested": a.idle,
        "held": held,
        "held_after_hold": status["open"],
        "closed_while_idle": status["closed"],
        "rss_kb_before": before,
        "rss_kb_after": after,
        "kb_per_subscriber": (after - before) / max(1, held),
        "steps": steps,
        "client_rss_kb": status["client_rss_kb"],
    }
