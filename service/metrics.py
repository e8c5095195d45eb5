"""Prometheus metrics. In gunicorn, PROMETHEUS_MULTIPROC_DIR is set by `duckcast serve`
before any worker imports prometheus_client, so every worker writes to the shared directory and
/metrics sums them; no custom collectors (they do not work in multiprocess mode)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

HTTP_REQUESTS = Counter(
    "duckcast_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "duckcast_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
STORE_REQUESTS = Counter(
    "duckcast_store_requests_total", "Store calls from workers", ["op", "outcome"]
)
STORE_LATENCY = Histogram(
    "duckcast_store_request_duration_seconds",
    "Store call latency seen by workers",
    ["op"],
    buckets=LATENCY_BUCKETS,
)
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
    "Subscribers the server disconnected (overflow: too slow; shutdown: worker stopping)",
    ["reason"],
)


def observe_batch(size: int, seconds: float) -> None:
    COMMIT_BATCH.observe(size)
    COMMIT_LATENCY.observe(seconds)


def exposition() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
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
