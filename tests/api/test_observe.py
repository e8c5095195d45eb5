"""Every HTTP request is observed once: a request id, metrics by route template, one access
log line that never holds a query string or a credential (service/api/edge.py)."""

from __future__ import annotations

import logging
import re

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.config import Settings
from service.logging import JsonFormatter, RequestContextFilter
from tests.api.conftest import Account

HEX_ID = re.compile(r"[0-9a-f]{32}")


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "duckcast.access"]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (None, False),
        ("trace-7f3a.proxy:1/2+=", True),
        ("x" * 128, True),
        ("x" * 129, False),  # too long: made anew
        ("has space", False),
        ("héllo".encode(), False),
        ("", False),
        ("token=abc123", False),  # would put a credential-looking value in every record
    ],
)
async def test_request_id_is_taken_when_well_formed_else_made(
    client: httpx.AsyncClient, sent: str | bytes | None, kept: bool
) -> None:
    """X-Request-ID comes back on the response: the caller's if it is 1-128 characters of
    [A-Za-z0-9._:/+=-], otherwise a fresh 32-hex-digit id."""
    headers: dict[str, str | bytes] = {} if sent is None else {"X-Request-ID": sent}
    r = await client.get("/healthz", headers=headers)
    answered = r.headers["x-request-id"]
    if kept:
        assert answered == sent
    else:
        assert HEX_ID.fullmatch(answered), answered


async def test_fast_path_and_errors_get_a_request_id_too(
    client: httpx.AsyncClient, alice: Account
) -> None:
    """A lean handler (GET /api/items) and a 404 from FastAPI both carry the id."""
    for path in ("/api/items", "/api/items/999999", "/nowhere"):
        r = await client.get(path, headers={**alice.headers, "X-Request-ID": "rid-1"})
        assert r.headers["x-request-id"] == "rid-1", path


async def test_access_log_line_per_request_with_route_template_and_user(
    client: httpx.AsyncClient, alice: Account, caplog: pytest.LogCaptureFixture
) -> None:
    """One INFO line on duckcast.access per request: method, route template (not the path),
    status, duration, request id and the caller's user id (None before authentication)."""
    caplog.set_level(logging.INFO, logger="duckcast.access")
    r = await client.post("/api/items", json={"title": "t"}, headers=alice.headers)
    item_id = r.json()["id"]
    await client.get(f"/api/items/{item_id}", headers={**alice.headers, "X-Request-ID": "r2"})
    await client.get("/healthz")
    created, read, health = access_records(caplog)
    assert (created.method, created.route, created.status) == ("POST", "/api/items", 201)  # type: ignore[attr-defined]
    assert created.user_id == alice.id  # type: ignore[attr-defined]
    assert read.route == "/api/items/{item_id}" and read.request_id == "r2"  # type: ignore[attr-defined]
    assert read.user_id == alice.id and read.status == 200  # type: ignore[attr-defined]
    assert read.duration_ms >= 0  # type: ignore[attr-defined]
    assert health.user_id is None and health.route == "/healthz"  # type: ignore[attr-defined]
    assert f"/api/items/{item_id}" not in read.getMessage()  # (the id alone may be in "1.2ms")


async def test_access_log_never_holds_query_strings_or_credentials(
    client: httpx.AsyncClient, alice: Account, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the query string (which may carry ?token=) nor the Authorization or Cookie
    values reach the access log, in any field of the record as the JSON formatter writes it."""
    caplog.set_level(logging.INFO, logger="duckcast.access")
    secrets = ["q-secret-words", "tok-in-query-123"]
    await client.get(
        f"/api/items?q={secrets[0]}&token={secrets[1]}",
        headers={**alice.headers, "Cookie": "duckcast_session=cookie-value-456"},
    )
    await client.get("/api/items?page=zz", headers=alice.headers)  # FastAPI's 422
    records = access_records(caplog)
    assert len(records) == 2
    written = "\n".join(JsonFormatter().format(r) for r in records)
    for secret in [*secrets, alice.token, "cookie-value-456", "page=zz"]:
        assert secret not in written
    assert '"route":"/api/items"' in written


async def test_access_log_can_be_switched_off(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """DUCKCAST_ACCESS_LOG=false: no access lines (the metrics still count the request)."""
    caplog.set_level(logging.INFO, logger="duckcast.access")
    app = create_app(settings.model_copy(update={"access_log": False}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/healthz")).status_code == 200
    assert access_records(caplog) == []


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_5xx_counters_exist_before_the_first_error(client: httpx.AsyncClient) -> None:
    """Every route's 500, 503 and 504 counters are exported at 0 from the start, so Prometheus sees
    the first 5xx as an increase (a child created by its first increment starts at 1 and
    rate() misses it)."""
    counts = samples((await client.get("/metrics")).text, "duckcast_http_requests_total")
    for status in ("503", "504"):
        assert (("method", "POST"), ("route", "/api/items"), ("status", status)) in counts
    for route in ("/api/items/{item_id}", "/api/login", "/readyz"):
        assert any(dict(k).get("route") == route and dict(k)["status"] == "500" for k in counts)


async def test_latency_is_grouped_so_argon2_logins_stay_apart(
    client: httpx.AsyncClient, alice: Account
) -> None:
    """Register and login are `auth`, item and user calls `api`, the rest `ops`; the top
    bucket below +Inf is 30 s."""
    await client.get("/api/items", headers=alice.headers)
    text = (await client.get("/metrics")).text
    buckets = samples(text, "duckcast_http_request_duration_seconds_bucket")
    groups = {dict(k)["route"]: dict(k)["group"] for k in buckets}
    assert groups["/api/login"] == groups["/api/register"] == "auth"
    assert groups["/api/items"] == groups["/api/items/{item_id}"] == "api"
    assert groups["/metrics"] == "ops"
    assert {dict(k)["le"] for k in buckets} >= {"30.0", "10.0", "+Inf"}


async def test_an_unhandled_error_is_logged_with_its_request_and_user(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug's 500 keeps the caller's X-Request-ID, and its traceback record, as the logging
    setup's filter sees it, names the request and the user (the observer wraps the handler
    that logs it); the access line says 500."""
    caplog.set_level(logging.INFO, logger="duckcast.access")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep(logging.ERROR)
    keep.addFilter(RequestContextFilter())
    logging.getLogger().addHandler(keep)

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")  # an injected fault: nothing real answers 500

    monkeypatch.setattr(app.state.store, "get_item", broken)
    try:
        r = await client.get("/api/items/1", headers={**alice.headers, "X-Request-ID": "err-1"})
    finally:
        logging.getLogger().removeHandler(keep)
    assert r.status_code == 500 and r.headers["x-request-id"] == "err-1"
    (error,) = seen
    assert error.exc_info is not None
    assert (error.request_id, error.user_id) == ("err-1", alice.id)  # type: ignore[attr-defined]
    (line,) = access_records(caplog)
    assert line.status == 500  # type: ignore[attr-defined]


async def test_a_request_is_counted_before_its_answer_leaves(tmp_path: object) -> None:
    """The request counter and the latency histogram already hold a request when the last
    part of its answer is handed to the server: a client that has its answer and then asks
    /metrics (from whichever worker: the counts are in the shared files by then) finds it
    counted. Read here at the moment the server is given that last part."""
    from pathlib import Path

    from prometheus_client import REGISTRY
    from starlette.types import Message

    from tests.api.wire import asgi_scope

    application = create_app(Settings(data_dir=Path(str(tmp_path)) / "d"))
    labels = {"method": "GET", "route": "/healthz", "status": "200"}
    timed = {"method": "GET", "route": "/healthz", "group": "ops"}
    seen: list[tuple[float | None, float | None]] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            seen.append(
                (
                    REGISTRY.get_sample_value("duckcast_http_requests_total", labels),
                    REGISTRY.get_sample_value(
                        "duckcast_http_request_duration_seconds_count", timed
                    ),
                )
            )

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async with application.router.lifespan_context(application):
        before = REGISTRY.get_sample_value("duckcast_http_requests_total", labels) or 0.0
        timed_before = (
            REGISTRY.get_sample_value("duckcast_http_request_duration_seconds_count", timed) or 0.0
        )
        for _ in range(3):
            scope = asgi_scope("http", "/healthz", b"", [(b"host", b"t")], method="GET")
            await application(scope, receive, send)
    assert seen == [(before + n, timed_before + n) for n in (1, 2, 3)]
    assert REGISTRY.get_sample_value("duckcast_http_requests_total", labels) == before + 3
