"""service.hoptrace and loadtests/fanout/hops.py: with the trace on, a create's rows from the
worker's side (the store client) and the store's side (server and writer) join into one POST
whose stamps run in the order its hops happen. Off, nothing is recorded."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from loadtests.fanout import hops
from service import hoptrace
from tests.store.conftest import Served, creates

# The order the stamps are taken in (the batch's start is derived, so only its end is here).
ORDER = (
    "app",
    "call",
    "sent",
    "s_read",
    "s_announce",
    "b_end",
    "s_handled",
    "s_flushed",
    "read",
    "resolved",
    "resumed",
    "end",
)


async def test_a_traced_create_joins_across_the_client_and_the_store(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    log = hoptrace.HopLog(str(trace_dir))
    monkeypatch.setattr(hoptrace, "HOPS", log)
    served.engine.add_batch_observer(hoptrace.note_batch)
    await served.client.ping()
    rows = []
    for i in range(3):
        # what the app does for a POST (service.api.app._traced), around the store call
        row = {"kind": "post", "rx": time.monotonic(), "app": time.monotonic()}
        hoptrace.POST.set(row)
        await served.client.create_items_at(1, creates(f"traced {i}"))
        row["end"] = time.monotonic()
        log.add(row)
        rows.append(row)
    log.flush()
    assert os.listdir(trace_dir) == [f"hops-{os.getpid()}.jsonl"]
    posts = hops.join(hops.load(trace_dir), 0.0, time.monotonic())
    assert len(posts) == 3
    for post in posts:
        stamps = [post[k] for k in ORDER]
        assert stamps == sorted(stamps), dict(zip(ORDER, stamps, strict=True))
        assert post["pid"] == os.getpid() and post["b_n"] >= 1
    summary = hops.summarize(posts)
    assert summary["n"] == 3 and set(summary["hops"]) == {h[0] for h in (*hops.HOPS, hops.TOTAL)}


async def test_off_by_default_nothing_is_kept(served: Served) -> None:
    assert hoptrace.HOPS is None  # the suite runs without DUCKCAST_FANOUT_TRACE
    hoptrace.POST.set({"kind": "post"})
    await served.client.create_items_at(1, creates("untraced"))
    assert hoptrace.POST.get() == {"kind": "post"}
    assert not served.client._rows and not served.client._sent_at
