"""The fan-out benchmark's instrument (loadtests/fanout/, loadtests/clients/) cannot rot
silently: its node clients parse, count what they receive exactly (duplicates, disorder and
gaps are seen), agree with the Python side on latency buckets, and a tiny run of the real
orchestrator against `duckcast serve --workers 2` counts every event once.

The peer (Socket.IO, installed by `npm ci`) is not run here: the suite makes no npm network
access. Its server and client files are syntax-checked only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from loadtests.fanout import cli
from loadtests.fanout.stats import Latency, bucket
from loadtests.fanout.systems import Duckcast, default_duckcast
from loadtests.harness import tcp_peers, wait_until

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "loadtests" / "clients"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def node_eval(script: str) -> object:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "-e", script], cwd=CLIENTS, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "path",
    [*sorted(CLIENTS.glob("*.js")), ROOT / "loadtests" / "peer" / "server.js"],
    ids=lambda p: p.name,
)
def test_node_sources_parse(path: Path) -> None:
    assert NODE is not None
    done = subprocess.run([NODE, "--check", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_tally_sees_duplicates_disorder_and_gaps() -> None:
    """What a subscriber got of seqs 11..16 (window after 10): 13 twice, 15 before 14, 16
    never, 9 from before the window."""
    got = node_eval(
        """
        const { Tally } = require("./tally.js");
        const t = new Tally(10);
        const firsts = [9, 11, 12, 13, 13, 15, 14].map((s) => t.see(s));
        console.log(JSON.stringify({ firsts, unique: t.unique, received: t.received,
          dups: t.dups, ooo: t.outOfOrder, early: t.early, last: t.last,
          upTo: [10, 13, 14, 99].map((hi) => t.uniqueUpTo(hi)) }));
        """
    )
    assert got == {
        "firsts": [False, True, True, True, False, True, True],
        "unique": 5,  # of the 6 expected: 16 is lost
        "received": 7,
        "dups": 1,
        "ooo": 1,
        "early": 1,
        "last": 15,
        "upTo": [0, 3, 4, 5],  # distinct seqs in (10, hi]
    }


def test_latency_buckets_agree_with_the_node_clients() -> None:
    values = [-3.0, 0.0, 0.01, 0.0101, 0.5, 1.0, 7.3, 99.9, 100.0, 2500.0, 1e9]
    got = node_eval(
        f"const {{ bucket }} = require('./latency.js');"
        f"console.log(JSON.stringify({json.dumps(values)}.map(bucket)))"
    )
    assert got == [bucket(v) for v in values]


def test_the_server_trace_buckets_agree_with_the_benchmark_and_its_deltas_read_right() -> None:
    """service/realtime/ring.py's Trace (--trace) counts in stats.py's buckets, and the
    orchestrator's delta of two cumulative readings is what was added between them."""
    from loadtests.fanout.phases import trace_delta
    from service.realtime.ring import Trace

    values = [-3.0, 0.0, 0.01, 0.0101, 0.5, 1.0, 7.3, 99.9, 100.0, 2500.0, 1e9]
    trace = Trace("/nonexistent")
    for v in values:
        trace.add("write", v)
    expected: dict[int, int] = {}
    for v in values:
        expected[bucket(v)] = expected.get(bucket(v), 0) + 1
    assert trace.hists["write"]["buckets"] == expected
    before = json.loads(json.dumps(trace.hists))
    for ms in range(1, 1001):
        trace.add("write", float(ms))
    after = json.loads(json.dumps(trace.hists))
    got = trace_delta({"write": [before["write"]]}, {"write": [after["write"]]})["write"]
    assert got["n"] == 1000 and got["n_by_worker"] == [1000]
    assert abs(got["p50"] - 500) <= 5 and abs(got["p99"] - 990) <= 10


def test_percentiles_of_a_node_histogram_are_within_one_percent() -> None:
    hist = node_eval(
        """
        const { Histogram } = require("./latency.js");
        const h = new Histogram();
        for (let ms = 1; ms <= 1000; ms++) h.add(ms);
        console.log(JSON.stringify(h));
        """
    )
    assert isinstance(hist, dict)
    lat = Latency([hist])
    for q, exact in ((50, 500), (95, 950), (99, 990)):
        assert abs(lat.percentile(q) - exact) <= 0.01 * exact, (q, lat.percentile(q))
    assert lat.summary()["max"] == 1000
    # deliveries still owed count as infinitely late
    assert Latency([hist], missing=20).percentile(99) == float("inf")


@pytest.mark.e2e
def test_orchestrator_counts_every_event_against_duckcast(tmp_path: Path) -> None:
    """`python -m loadtests.fanout` at a tiny scale, Duckcast only: 10 subscribers (5 SSE, 5
    WebSocket ?format=json) each receive each of the 40 writes once, in order."""
    out = tmp_path / "fanout.json"
    cmd = [
        sys.executable, "-m", "loadtests.fanout", "--systems", "duckcast", "--phases", "card",
        "--rounds", "1", "--subscribers", "10", "--rate", "20", "--duration", "2",
        "--probe", "1", "--clients", "2", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    # 1 = a target missed (p99 on a busy machine): timing is not this test's business
    assert done.returncode in (0, 1), done.stdout + done.stderr
    card = json.loads(out.read_text())["rounds"]["duckcast"][0]["card"]
    assert card["writes"]["ok"] == card["events"] == 40
    assert card["subscribers"] == 10
    assert {k: v["subs"] for k, v in card["by_kind"].items()} == {"sse": 5, "ws": 5}
    assert card["delivered"] == card["expected_deliveries"] == 400
    assert {k: v["unique"] for k, v in card["by_kind"].items()} == {"sse": 200, "ws": 200}
    assert (card["lost"], card["duplicated"], card["out_of_order"]) == (0, 0, 0)
    assert card["latency_ms"]["n"] == 400  # every delivery carried its commit time
    assert card["ends"] == {}
    assert card["post_without_subscribers"]["ok"] == 20
    assert card["server_cpu_us_per_delivery"] > 0


@pytest.mark.e2e
def test_streams_the_server_ended_resume_whole(tmp_path: Path) -> None:
    """The overload phase's resume path: streams a worker ends (SIGTERM: WebSocket 1012, SSE
    end of stream) reopen from their last seq and end up with every event exactly once."""
    args = cli.parse_args(["--systems", "duckcast", "--clients", "1", "--senders", "4"])
    with ExitStack() as stack:
        system = Duckcast(default_duckcast())
        rig = cli.start(system, args, tmp_path, stack, "resume")
        rig.open_subscribers(6)
        lo = system.seq()
        rig.subs.arm(lo)
        rig.write(20, 0.5, lo)
        held = {pid: tcp_peers(pid, system.port) for pid in system.worker_pids()}
        victim = max(held, key=lambda pid: len(held[pid]))
        os.kill(victim, signal.SIGTERM)
        ended = lambda: sum(rig.subs.status()["ends"].values()) == len(held[victim])  # noqa: E731
        assert wait_until(ended, 30), rig.subs.status()
        assert wait_until(lambda: victim not in system.worker_pids(), 30)
        assert wait_until(lambda: len(system.worker_pids()) == 2, 60)
        system.wait_ready()
        mid = system.seq()
        rig.write(20, 0.5, mid)
        resumed = rig.subs.resume()
        hi = system.seq()
        got = rig.subs.drain(hi, hi - lo, 30)
    assert resumed == {"resumable": len(held[victim]), "opened": len(held[victim]), "failed": 0}
    assert got["expected"] == 20
    assert got["open"] == 6
    for kind, counts in got["window"].items():
        assert (counts["lost"], counts["dups"], counts["out_of_order"]) == (0, 0, 0), kind
        assert counts["unique"] == 20 * counts["subs"], kind
