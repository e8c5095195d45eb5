"""Property: whatever a client sends to any route or stream (arbitrary Unicode, bytes and
numbers in the path, query, headers, cookies and body), the answer is never a 5xx, nothing is
logged as an error or with a traceback, and every error comes in the negotiated format.

Requests are driven straight through ASGI (no HTTP client normalising them), against the real
app with its embedded store. Half of them carry a valid session, so they get past 401 into
parameter and body validation.

Tokens are arbitrary text too (the token parser is also property-tested on its own, issue 6.1).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import Message

from service.api.app import create_app
from service.config import Settings
from service.pb import duckcast_pb2 as pb
from tests.api.wire import JSON, PROTOBUF, X_PROTOBUF, asgi_scope

ROUTES: list[tuple[str, tuple[str, ...]]] = [
    ("/api/register", ("POST",)),
    ("/api/login", ("POST",)),
    ("/api/logout", ("POST",)),
    ("/api/me", ("GET",)),
    ("/api/items", ("GET", "POST")),
    ("/api/items/bulk", ("POST",)),
    ("/api/items/{}", ("GET", "PUT", "PATCH", "DELETE")),
    ("/api/stats", ("GET",)),
    ("/api/events", ("GET",)),
    ("/api/upload", ("POST",)),
    ("/uploads/{}", ("GET",)),
    ("/protos/{}.proto", ("GET",)),
    ("/healthz", ("GET",)),
    ("/readyz", ("GET",)),
    ("/metrics", ("GET",)),
    ("/", ("GET",)),
    ("/{}", ("GET", "POST")),
]
PARAMS = ["page", "limit", "owner_id", "status", "q", "last_event_id", "since", "format", "token"]
HEADERS = ["accept", "content-type", "content-length", "last-event-id", "if-match",
           "idempotency-key", "origin", "x-forwarded-for", "range"]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
PROTOBUF_TYPES = (PROTOBUF, X_PROTOBUF)

# Integers as clients really garble them: other scripts' digits, signs, separators, huge.
DIGITS = st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=6)
NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "1", "7", "20", "100", "101", "1_0", "+5", " 5", "5.0", "9" * 25]),
    DIGITS,
    st.floats(allow_nan=True).map(str),
)
TEXT = st.text(max_size=24)
VALUE = st.one_of(NUMBERS, TEXT, st.sampled_from(["", "active", "completed", "json"]))
TOKEN_TEXT = st.text(max_size=60).filter(lambda t: not set(t) & set("\r\n\0"))
# Header bytes reach the app decoded as latin-1: b"\xb2" is "²", which isdigit() accepts.
LATIN1_DIGITS = st.text(st.characters(categories=["Nd", "No"], max_codepoint=0xFF), min_size=1)
HEADER_BYTES = st.one_of(
    st.binary(max_size=40).filter(lambda b: not (set(b) & set(b"\r\n\0"))),
    VALUE.map(lambda v: v.encode("utf-8")),
    LATIN1_DIGITS.map(lambda v: v.encode("latin-1")),
    st.sampled_from([JSON, PROTOBUF, X_PROTOBUF, "*/*", '"1"', "*", 'W/"1"']).map(str.encode),
)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), TEXT)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
)
FIELD_NAMES = ["title", "description", "status", "priority", "items", "username", "password"]
JSON_BODY = st.dictionaries(st.sampled_from(FIELD_NAMES) | TEXT, JSON_VALUE, max_size=5).map(
    lambda d: json.dumps(d).encode()  # (not orjson: it refuses huge integers, NaN, Infinity)
)
PB_BODY = st.builds(
    lambda title, prio, status: pb.BulkCreateRequest(
        items=[pb.ItemCreate(title=title, priority=prio, status=status)]
    ).SerializeToString(),
    TEXT,
    st.integers(-(2**31), 2**31 - 1),
    TEXT,
)
BODY = st.one_of(st.binary(max_size=120), JSON_BODY, PB_BODY, st.just(b""))
CONTENT_TYPE = st.one_of(
    st.sampled_from([JSON, PROTOBUF, X_PROTOBUF, "text/plain", "multipart/form-data; boundary=x"]),
    TEXT,
)


@dataclass
class Request:
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@st.composite
def requests(draw: st.DrawFn, session: str) -> Request:
    template, methods = draw(st.sampled_from(ROUTES))
    method = draw(st.sampled_from(methods) | st.sampled_from(METHODS))
    path = template.format(draw(VALUE.filter(lambda v: "/" not in v)))
    pairs = draw(st.lists(st.tuples(st.sampled_from(PARAMS) | TEXT, VALUE), max_size=4))
    query = draw(
        st.one_of(
            st.just(urllib.parse.urlencode(pairs).encode()),
            st.binary(max_size=30),
        )
    )
    headers = [
        (name.encode(), value)
        for name, value in draw(
            st.lists(st.tuples(st.sampled_from(HEADERS), HEADER_BYTES), max_size=4)
        )
    ]
    headers.append((b"content-type", draw(CONTENT_TYPE).encode("utf-8")))
    auth = draw(st.sampled_from(["none", "bearer", "cookie", "bad-bearer", "bad-cookie"]))
    token = session if auth in ("bearer", "cookie") else draw(TOKEN_TEXT)
    if auth.endswith("bearer"):
        headers.append((b"authorization", b"Bearer " + token.encode("utf-8", "surrogatepass")))
    elif auth.endswith("cookie"):
        headers.append((b"cookie", b"duckcast_session=" + token.encode("utf-8", "surrogatepass")))
    return Request(method, path, query, headers, draw(BODY))


def negotiated(headers: list[tuple[bytes, bytes]]) -> str:
    """The media type an error must come in: the protobuf type Accept names, else JSON."""
    accept = next((v for k, v in headers if k == b"accept"), b"").decode("latin-1")
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in PROTOBUF_TYPES:
            return media
    return JSON


async def call_http(app: FastAPI, req: Request) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP request through ASGI; a stream is read until its first body chunk."""
    scope = asgi_scope("http", req.path, req.query, req.headers, method=req.method)
    status, headers, body = 0, {}, bytearray()
    started = asyncio.Event()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": req.body, "more_body": False}
        await started.wait()  # the client leaves once it has the first of the answer
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            headers.update(message.get("headers", []))
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            started.set()

    await asyncio.wait_for(app(scope, receive, send), 10)
    return status, headers, bytes(body)


def assert_negotiated_error(
    req: Request, status: int, headers: dict[bytes, bytes], body: bytes
) -> None:
    media = negotiated(req.headers)
    content_type = headers.get(b"content-type", b"").decode()
    if req.method == "HEAD":
        return
    if media == JSON:
        assert content_type.startswith(JSON), (status, content_type, body[:100])
        detail = orjson.loads(body)
        assert set(detail) == {"detail"} and isinstance(detail["detail"], str), detail
    else:
        assert content_type == media, (status, content_type, body[:100])
        error = pb.Error.FromString(body)
        assert error.code == status and error.message, error


class ErrorLog(logging.Handler):
    """Everything logged at ERROR, or with a traceback, while the property runs."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.bad.append(self.format(record))


@dataclass
class Live:
    app: FastAPI
    loop: asyncio.AbstractEventLoop
    token: str
    errors: ErrorLog

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture
def live(tmp_path: Any, password_hash: str) -> Iterator[Live]:
    """The app with its lifespan running on a loop of its own (hypothesis drives a plain
    function), a user with one item, and a log handler that collects errors."""
    loop = asyncio.new_event_loop()
    app = create_app(Settings(data_dir=tmp_path / "data"))
    lifespan = app.router.lifespan_context(app)
    loop.run_until_complete(lifespan.__aenter__())
    user = loop.run_until_complete(app.state.store.create_user("prop", password_hash))
    loop.run_until_complete(app.state.store.create_items(user.id, [pb.ItemCreate(title="seed")]))
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        yield Live(app, loop, app.state.signer.issue(user.id).value, errors)
    finally:
        logging.getLogger().removeHandler(errors)
        loop.run_until_complete(lifespan.__aexit__(None, None, None))
        loop.close()


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(data=st.data())
def test_no_input_gets_a_5xx_a_traceback_or_an_error_in_another_format(
    live: Live, data: st.DataObject
) -> None:
    req = data.draw(requests(live.token))
    status, headers, body = live.run(call_http(live.app, req))
    assert 100 <= status < 500, (req, status, body[:300])
    if status >= 400:
        assert_negotiated_error(req, status, headers, body)
    assert live.errors.bad == [], live.errors.bad


async def call_ws(app: FastAPI, path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """A WebSocket session through ASGI: the close code the server sends (0: it accepted and
    kept the socket open until the client left)."""
    scope = asgi_scope("websocket", path, query, headers, subprotocols=[])
    code = 0
    accepted = asyncio.Event()
    connected = False

    async def receive() -> Message:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await accepted.wait()
        await asyncio.sleep(0.01)  # let the server validate and maybe close first
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        nonlocal code
        if message["type"] == "websocket.accept":
            accepted.set()
        elif message["type"] == "websocket.close":
            code = message.get("code", 1000)

    await asyncio.wait_for(app(scope, receive, send), 10)
    return code


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(data=st.data())
def test_no_stream_parameter_breaks_a_stream(live: Live, data: st.DataObject) -> None:
    """SSE and WebSocket with arbitrary owner_id/status/Last-Event-ID/since/format/token:
    SSE answers 200 or a 4xx in the negotiated format; a WebSocket closes with 1008 (bad
    parameter) or 4401 (no session), or stays open; never a 1011 or an exception."""
    params = data.draw(
        st.dictionaries(
            st.sampled_from(["owner_id", "status", "since", "last_event_id", "format"]),
            VALUE,
            max_size=4,
        )
    )
    session = data.draw(st.sampled_from(["valid", "none"]) | TOKEN_TEXT)
    if session != "none":
        params["token"] = live.token if session == "valid" else session
    query = urllib.parse.urlencode(params).encode()
    resume = data.draw(st.none() | HEADER_BYTES)
    headers = [(b"last-event-id", resume)] if resume is not None else []
    accept = data.draw(st.sampled_from([b"", JSON.encode(), PROTOBUF.encode()]))
    sse = Request("GET", "/api/events", query, [*headers, (b"accept", accept)], b"")
    status, got, body = live.run(call_http(live.app, sse))
    assert status == 200 or 400 <= status < 500, (params, status, body[:200])
    if status >= 400:
        assert_negotiated_error(sse, status, got, body)
    code = live.run(call_ws(live.app, "/ws/items", query, headers))
    assert code in (0, 1000, 1008, 4401), (params, code)
    assert live.errors.bad == [], live.errors.bad


@pytest.mark.parametrize(
    ("method", "path", "query", "headers"),
    [
        ("GET", "/api/items/", b"\x80", []),  # Starlette's slash redirect decoded it: 500
        ("POST", "/api/items", b"x=\xff", [(b"idempotency-key", b"k")]),
        ("POST", "/api/register", b"", [(b"content-length", b"\xb2")]),  # "²".isdigit()
        ("POST", "/api/items", b"", [(b"content-length", b"\xb9\xb2")]),
        ("GET", "/api/items/\u0661\u0662", b"", []),
        ("GET", "/api/items", "limit=\u00b2".encode(), []),
    ],
    ids=["query-latin1-redirect", "query-latin1-create", "cl-sup2", "cl-fast", "path", "limit"],
)
def test_inputs_that_once_answered_500(
    live: Live, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Found by the properties above (or the issue): each is a 4xx now."""
    auth = [(b"authorization", b"Bearer " + live.token.encode())]
    req = Request(method, path, query, [*headers, *auth], b'{"title": "x"}')
    status, got, body = live.run(call_http(live.app, req))
    assert 400 <= status < 500, (status, body)
    assert_negotiated_error(req, status, got, body)
    assert live.errors.bad == []
