"""Where a POST's time goes, hop by hop (`--trace`): the rows service/hoptrace.py writes in the
workers and the store process, joined and summed up for the POSTs of one time window.

A worker's `post` row is joined with the store's `req` row of the request that carried it (by
the worker's pid and the request id) and with the store's commit batch that answered it (the
last batch to end before the answer reached the request's task). Every stamp is
`time.monotonic()`, one clock for all the machine's processes. The hops, in order:

    rx->app          the worker: request bytes read -> the app starts on it (parse, task start)
    app->call        the worker: middleware, auth, body, validation -> the store client
    call->sent       the worker: creates of a loop turn coalesced -> frame written
    sent->read       the store's loop parses the frame
    read->batch      waits for the writer (a commit in progress, the commit window)
    batch->announce  the writer asks the store's loop to send the Committing notice: it runs
    announce->commit apply and COMMIT (after the notice)
    commit->handled  the writer's answer reaches the request's task on the store's loop
    handled->flushed the answer is written to the worker's socket
    flushed->wread   the worker's read loop parses it
    wread->resolved  the create's future is set (the CreateMany's task)
    resolved->resumed the request's handler runs again
    resumed->end     the response is built and its last part handed to the transport
"""

from __future__ import annotations

import bisect
import json
import math
from pathlib import Path
from typing import Any

# (name, from, to): a stamp of the joined row (worker stamps plain, the store's prefixed "s_")
HOPS = (
    ("rx->app", "rx", "app"),
    ("app->call", "app", "call"),
    ("call->sent", "call", "sent"),
    ("sent->read", "sent", "s_read"),
    ("read->batch", "s_read", "b_start"),
    ("batch->announce", "b_start", "s_announce"),
    ("announce->commit", "s_announce", "b_end"),
    ("commit->handled", "b_end", "s_handled"),
    ("handled->flushed", "s_handled", "s_flushed"),
    ("flushed->wread", "s_flushed", "read"),
    ("wread->resolved", "read", "resolved"),
    ("resolved->resumed", "resolved", "resumed"),
    ("resumed->end", "resumed", "end"),
)
TOTAL = ("rx->end", "rx", "end")


def load(directory: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(directory.glob("hops-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def join(rows: list[dict[str, Any]], t0: float, t1: float) -> list[dict[str, float]]:
    """The POSTs whose app stamp lies in [t0, t1], each with its store request and batch."""
    reqs = {(r["pid"], r["rid"]): r for r in rows if r["kind"] == "req"}
    batches = sorted((r for r in rows if r["kind"] == "batch"), key=lambda b: b["end"])
    ends = [b["end"] for b in batches]
    out = []
    for post in rows:
        if post["kind"] != "post" or not t0 <= post["app"] <= t1 or "rid" not in post:
            continue
        req = reqs.get((post["pid"], post["rid"]))
        if req is None or "handled" not in req or "announce" not in req:
            continue
        joined = dict(post)
        joined.update({"s_" + k: v for k, v in req.items() if isinstance(v, float)})
        i = bisect.bisect_right(ends, req["handled"]) - 1
        if i < 0 or batches[i]["end"] < req["read"]:
            continue
        joined["b_start"], joined["b_end"] = batches[i]["start"], batches[i]["end"]
        joined["b_n"] = batches[i]["n"]
        out.append(joined)
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(posts: list[dict[str, float]], tail: float = 2.0) -> dict[str, Any]:
    """Per hop p50 / p90 / p99 (ms), and its mean over the slowest `tail` % of the POSTs (what
    the p99 is made of: the hops that grow there)."""
    if not posts:
        return {"n": 0}

    def ms(p: dict[str, float], a: str, b: str) -> float:
        return (p[b] - p[a]) * 1000

    totals = sorted(posts, key=lambda p: ms(p, TOTAL[1], TOTAL[2]))
    slow = totals[-max(1, round(len(totals) * tail / 100)) :]
    hops = {}
    for name, a, b in (*HOPS, TOTAL):
        values = [ms(p, a, b) for p in posts]
        hops[name] = {
            "p50": percentile(values, 50),
            "p90": percentile(values, 90),
            "p99": percentile(values, 99),
            "slow_mean": sum(ms(p, a, b) for p in slow) / len(slow),
        }
    return {"n": len(posts), "slow_n": len(slow), "hops": hops}


def lines(label: str, summary: dict[str, Any]) -> list[str]:
    if not summary.get("n"):
        return [f"{label}: no traced POST"]
    out = [
        f"{label}: {summary['n']} POSTs; per hop p50 / p90 / p99 ms, and the mean over the "
        f"slowest {summary['slow_n']}"
    ]
    for name, h in summary["hops"].items():
        out.append(
            f"  {name:<18} {h['p50']:7.2f} {h['p90']:7.2f} {h['p99']:7.2f}   "
            f"slow {h['slow_mean']:7.2f}"
        )
    return out
