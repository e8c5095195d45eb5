"""The one layer around every request (service/api/edge.py): what the other test files do not
already hold it to (request ids and the access log: test_observe.py; headers and 500s:
test_security_headers.py; declared and streamed body limits: test_bad_input.py)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.app import create_app
from service.config import Settings
from tests.api.conftest import SmallApp, running
from tests.api.wire import asgi_scope, first_of_stream


async def _call(
    app: ASGIApp, scope: dict[str, Any], chunks: list[bytes]
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP request through ASGI, the body in `chunks`; the client stays until answered."""
    pending = list(chunks)
    answer: dict[str, Any] = {"body": b""}
    done = asyncio.Event()

    async def receive() -> Message:
        if pending:
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending)}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer["status"], answer["headers"] = message["status"], dict(message["headers"])
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")
            if not message.get("more_body"):
                done.set()

    await asyncio.wait_for(app(scope, receive, send), 10)
    return answer["status"], answer["headers"], answer["body"]


async def test_a_query_string_that_is_not_utf8_is_refused(small: SmallApp) -> None:
    """Starlette's URL would raise on it (a 500): HTTP answers 400 in the negotiated format,
    with the headers every answer gets; a WebSocket is accepted, then closed with 1008."""
    scope = asgi_scope("http", "/api/items", b"q=\xff", [(b"host", b"test")], method="GET")
    status, headers, body = await _call(small.app, scope, [b""])
    assert status == 400
    assert orjson.loads(body) == {"detail": "query string: not valid UTF-8"}
    assert headers[b"x-content-type-options"] == b"nosniff" and b"x-request-id" in headers
    sent: list[Message] = []
    connected = False

    async def receive() -> Message:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    ws = asgi_scope("websocket", "/ws/items", b"token=\xff", [(b"host", b"test")])
    await asyncio.wait_for(small.app(ws, receive, send), 10)
    assert sent[0] == {"type": "websocket.accept"}
    assert sent[1]["type"] == "websocket.close" and sent[1]["code"] == 1008


async def test_a_body_without_http1_framing_is_counted(small: SmallApp) -> None:
    """A body that no Content-Length bounds (HTTP/2 need not send one) is counted as it
    arrives: past max_body_bytes it answers 413. (Under HTTP/1 the server's framing bounds
    it: by Content-Length, else chunked, test_bad_input's streamed case.)"""
    user = await small.app.state.store.create_user("framer", "h")
    token = small.app.state.signer.issue(user.id).value.encode()
    headers = [
        (b"host", b"test"),
        (b"authorization", b"Bearer " + token),
        (b"content-type", b"application/json"),
    ]
    scope = asgi_scope("http", "/api/items", b"", headers, method="POST", http_version="2")
    limit = small.settings.max_body_bytes
    chunks = [b'{"title": "', b"x" * limit, b'"}']
    status, _, body = await _call(small.app, scope, chunks)
    assert status == 413, body
    assert orjson.loads(body) == {"detail": f"body larger than {limit} bytes"}


async def test_the_upload_route_has_its_own_body_limit(tmp_path: Path) -> None:
    """/api/upload takes bodies up to upload_max_bytes (and the multipart framing), even
    when that is more than max_body_bytes, the limit of every other route."""
    settings = Settings(data_dir=tmp_path / "d", max_body_bytes=2048, upload_max_bytes=8192)
    async with running(settings) as served:
        user = await served.app.state.store.create_user("uploader", "h")
        auth = {"Authorization": f"Bearer {served.app.state.signer.issue(user.id).value}"}
        files = {"file": ("big.bin", b"b" * 8192)}
        r = await served.client.post("/api/upload", files=files, headers=auth)
        assert r.status_code == 201, r.text
        r = await served.client.post("/api/items/bulk", content=b"x" * 4096, headers=auth)
        assert r.status_code == 413, r.text


async def test_streams_get_a_request_id_but_no_access_line(
    small: SmallApp, caplog: pytest.LogCaptureFixture
) -> None:
    """An event stream is long-lived, with its own metrics: it carries an X-Request-ID, but is
    neither timed nor logged as a request."""
    caplog.set_level(logging.INFO, logger="duckcast.access")
    user = await small.app.state.store.create_user("streamer", "h")
    token = small.app.state.signer.issue(user.id).value
    _, headers = await first_of_stream(small.app, "/api/events", token)
    assert b"x-request-id" in headers
    assert (await small.client.get("/healthz")).status_code == 200
    routes = [r.route for r in caplog.records if r.name == "duckcast.access"]  # type: ignore[attr-defined]
    assert routes == ["/healthz"]


class Broken:
    """A middleware a deployment adds, with a bug."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/healthz":
            raise RuntimeError("a bug in an added middleware")
        await self.app(scope, receive, send)


async def test_an_added_middleware_sits_inside_the_edge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A middleware added with add_middleware is inside Edge: its failure is a negotiated 500
    with the request id, logged with its traceback and counted in the access log."""
    caplog.set_level(logging.INFO, logger="duckcast.access")
    app: FastAPI = create_app(Settings(data_dir=tmp_path / "d"))
    app.add_middleware(Broken)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/healthz", headers={"X-Request-ID": "added-1"})
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    assert r.headers["x-request-id"] == "added-1"
    assert "a bug in an added middleware" in caplog.text
    (line,) = [r for r in caplog.records if r.name == "duckcast.access"]
    assert line.status == 500 and line.request_id == "added-1"  # type: ignore[attr-defined]
