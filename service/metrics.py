"""Prometheus metrics: what each one means is what dashboards and alerts rely on
(deploy/grafana/dashboards/duckcast.json, deploy/prometheus/alerts.yml).

In gunicorn, PROMETHEUS_MULTIPROC_DIR is set by `duckcast serve` before any worker imports
prometheus_client, so every process (each worker, and the store under `serve --workers`) writes
to the shared directory and /metrics sums them. Multiprocess mode has no process collector and
no custom collectors in the workers: `exposition()` adds `process_*` for every live process
(labelled by pid) when it builds the answer. Counters with labels are created at import for the
label values known in advance: a child that first appears with value 1 is invisible to
`rate()`/`increase()`, so the first 5xx, drop or close would not show.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client import values as _values
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.pid import getpid

if _values.ValueClass.__name__ == "MmapedValue":  # multiprocess mode (PROMETHEUS_MULTIPROC_DIR)
    # The same per-process files, told the pid without a system call per increment (it checks
    # for a fork on every one): prometheus_client's documented hook for the process identifier
    # (MultiProcessValue's process_identifier, "at your own risk": ours is os.getpid's answer,
    # service.pid). Before any metric below is made: each reads ValueClass as it is made.
    _values.ValueClass = _values.MultiProcessValue(process_identifier=getpid)  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# A request may wait for the store's deadline (5 s) or gunicorn's timeout (30 s): the top
# buckets must see past both, or every slow request reads as 5 s.
HTTP_BUCKETS = (*LATENCY_BUCKETS, 10, 30)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TRANSPORTS = ("sse", "ws")
# Why the server ended a change stream (`duckcast_stream_closes_total{reason}`):
# client: the client went away; overflow: too slow (DUCKCAST_STREAM_STALL_SECONDS);
# shutdown: the worker is stopping; expired: its token expired or was revoked;
# error: the store failed during replay; policy: a WebSocket client sent a message.
CLOSE_REASONS = ("client", "overflow", "shutdown", "expired", "error", "policy")
# The 5xx a worker answers, created per route: 500 a bug; 503 store unreachable or slow (the
# write was not applied); 504 the store stopped while committing it (in doubt).
SERVER_ERRORS = ("500", "503", "504")

# -- HTTP (service/api/edge.py) ----------------------------------------------------------

HTTP_REQUESTS = Counter(
    "duckcast_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "duckcast_http_request_duration_seconds",
    "HTTP request latency by route template; group: api (item and user calls), auth (register "
    "and login: argon2 hashing, slow by design), ops (health, metrics, docs, schemas)",
    ["method", "route", "group"],
    buckets=HTTP_BUCKETS,
)

# -- store calls seen by workers (service/storeclient) ---------------------------------------

STORE_REQUESTS = Counter(
    "duckcast_store_requests_total", "Store calls from workers", ["op", "outcome"]
)
STORE_LATENCY = Histogram(
    "duckcast_store_request_duration_seconds",
    "Store call latency seen by workers",
    ["op"],
    buckets=LATENCY_BUCKETS,
)

# -- the store's writer and outbox (service/store) -------------------------------------------

COMMIT_BATCH = Histogram(
    "duckcast_commit_batch_size",
    "Writes per group commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
COMMIT_LATENCY = Histogram(
    "duckcast_commit_duration_seconds",
    "Time to apply and commit one batch",
    buckets=LATENCY_BUCKETS,
)
EVENTS_PUBLISHED = Counter("duckcast_events_published_total", "Change events published")
STORE_SEQ = Gauge(
    "duckcast_store_seq",
    "Last committed change event seq",
    multiprocess_mode="livemax",
)
PUBLISHED_SEQ = Gauge(
    "duckcast_outbox_published_seq",
    "Last seq the outbox published to the backplane",
    multiprocess_mode="livemax",
)
OUTBOX_BACKLOG = Gauge(
    "duckcast_outbox_backlog",
    "Committed events not yet published to the backplane (store seq - published seq)",
    multiprocess_mode="livemax",
)

# -- realtime: backplane, relay, streams (service/backplane, service/realtime) ---------------

BACKPLANE_CONNECTED = Gauge(
    "duckcast_backplane_connected",
    "1 while the backplane subscription is live, 0 while it is down (the lowest of the "
    "instance's workers)",
    ["backplane"],
    multiprocess_mode="livemin",
)
RELAY_SEQ = Gauge(
    "duckcast_relay_seq",
    "Last seq the worker's event relay handed to its subscribers (the lowest of the "
    "instance's workers); duckcast_store_seq minus this is the delivery lag in events",
    # Labelled like duckcast_backplane_connected (Backplane.kind) so only a relay creates it:
    # an unlabelled gauge would be 0 in the store's process too, and win every min().
    ["backplane"],
    multiprocess_mode="livemin",
)
GAP_REPAIRS = Counter(
    "duckcast_gap_repairs_total",
    "Times a relay fetched missed events from the store's log (a seq gap or a resubscription)",
)
RELAY_INBOX_OVERFLOWS = Counter(
    "duckcast_relay_inbox_overflows_total",
    "Times a relay's inbox was full (DUCKCAST_RELAY_INBOX): its queued messages were dropped "
    "and the gap repaired from the store's log",
)
RELAY_RESTARTS = Counter(
    "duckcast_relay_restarts_total",
    "Times a relay task failed or ended unexpectedly and was restarted (see the logs)",
    ["task"],
)
READ_CACHE = Counter(
    "duckcast_read_cache_requests_total",
    "Item and first-page reads by whether the worker's read cache answered them (hit) or the "
    "store did (miss: not cached, or the cache behind the seq the request presented)",
    ["kind", "result"],
)
DELIVERY_LAG = Histogram(
    "duckcast_event_delivery_lag_seconds",
    "From an event's commit to its write on a subscriber's socket",
    ["transport"],
    buckets=LAG_BUCKETS,
)
STREAM_OPENS = Counter("duckcast_stream_opens_total", "Change streams opened", ["transport"])
STREAM_CLOSES = Counter(
    "duckcast_stream_closes_total",
    "Change streams ended, by who ended them and why (see CLOSE_REASONS)",
    ["transport", "reason"],
)
SUBSCRIBERS = Gauge(
    "duckcast_subscribers",
    "Connected change-event subscribers",
    ["transport"],
    multiprocess_mode="livesum",
)
DELIVERIES = Counter(
    "duckcast_deliveries_total", "Change events delivered to subscribers", ["transport"]
)
DROPPED = Counter(
    "duckcast_subscribers_dropped_total",
    "Subscribers the server disconnected (overflow: too slow; shutdown: worker stopping; "
    "policy: a WebSocket client sent a message; expired: the token expired or was revoked)",
    ["reason"],
)

# -- the build ---------------------------------------------------------------------------------

BUILD_INFO = Gauge(
    "duckcast_build_info",
    "Always 1; labels say which Duckcast and Python run",
    ["version", "python"],
    # "live": the files of exited processes are removed, so exposition() also reads the live
    # pids from them
    multiprocess_mode="livemax",
)


def _package_version() -> str:
    try:
        return version("duckcast")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown"


def _preinitialise() -> None:
    for transport in TRANSPORTS:
        SUBSCRIBERS.labels(transport)
        STREAM_OPENS.labels(transport)
        DELIVERIES.labels(transport)
        DELIVERY_LAG.labels(transport)
        for reason in CLOSE_REASONS:
            STREAM_CLOSES.labels(transport, reason)
    for reason in ("overflow", "shutdown"):
        DROPPED.labels(reason)
    BUILD_INFO.labels(_package_version(), platform.python_version()).set(1)


_preinitialise()


def route_group(route: str) -> str:
    if route in ("/api/register", "/api/login"):
        return "auth"
    return "api" if route.startswith("/api/") else "ops"


def preinitialise_routes(routes: Iterable[tuple[str, str]]) -> None:
    """Create the 5xx children and the latency histogram of every (method, route template)
    at 0, so the first 500 or 503, and a route's first requests, are an increase Prometheus
    can see."""
    for method, route in routes:
        HTTP_LATENCY.labels(method, route, route_group(route))
        for status in SERVER_ERRORS:
            HTTP_REQUESTS.labels(method, route, status)


def observe_batch(size: int, seconds: float) -> None:
    COMMIT_BATCH.observe(size)
    COMMIT_LATENCY.observe(seconds)


def observe_outbox(last_seq: int, published: int) -> None:
    STORE_SEQ.set(last_seq)
    PUBLISHED_SEQ.set(published)
    OUTBOX_BACKLOG.set(max(0, last_seq - published))


class LiveProcessesCollector(Collector):
    """`process_*` (CPU, memory, file descriptors, start time) of every live process that
    writes to the multiprocess directory, labelled by pid. Multiprocess mode cannot sum these
    (a sum of start times means nothing), and a scrape reaches one worker only, which can
    still read its siblings' /proc entries (same user, same container)."""

    LIVE_FILE = re.compile(r"gauge_live\w*?_(\d+)\.db")

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def live_pids(self) -> list[int]:
        pids = {int(m.group(1)) for p in self.path.iterdir() if (m := self.LIVE_FILE.match(p.name))}
        return sorted(pids)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for pid in self.live_pids():
            collector = ProcessCollector(pid=functools.partial(str, pid), registry=None)
            for family in collector.collect():
                out = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    out.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from merged.values()


def exposition() -> tuple[bytes, str]:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(LiveProcessesCollector(path))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# Security (issue 7): what was refused, so an attack or a misconfigured secret shows up.
STORE_HANDSHAKES_REFUSED = Counter(
    "duckcast_store_handshakes_refused_total",
    "Connections to the store closed because they did not prove the shared secret",
)
BACKPLANE_REJECTED = Counter(
    "duckcast_backplane_rejected_total",
    "Backplane messages dropped because their MAC was missing or wrong",
)
