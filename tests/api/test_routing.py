"""One router (service.api.routing): the hot routes and the streams are routes of FastAPI's own
router, so what holds for any route holds for them: `root_path`, every middleware added with
`app.add_middleware`, the exception handlers, the OpenAPI description; and a token is verified
once per request even when a lean handler hands the request to the declared endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, UploadFile
from httpx_sse import aconnect_sse
from prometheus_client import REGISTRY
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.asyncio.client import connect

from service.api.app import create_app
from service.api.edge import route_path
from service.api.routing import SERVER_CONNECTION, StreamEndpoint
from service.config import Settings
from service.errors import NotFound
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.wire import ID, LIMIT, LIMIT_DEFAULT, PAGE, PAGE_DEFAULT, QUERY_MAX_LENGTH, STATUSES
from service.worker import uvicorn_options
from tests.api.conftest import running
from tests.api.wire import asgi_scope, first_of_stream
from tests.realtime.conftest import TIMEOUT, serve
from tests.sse import EventStream

PREFIX = "/dc"


async def _ws_opens(app: ASGIApp, path: str, token: str, root_path: str) -> list[Message]:
    """A WebSocket handshake straight through ASGI: what the app sends until it accepts (or
    closes), then the client leaves."""
    sent: list[Message] = []
    answered = asyncio.Event()
    connected = False

    async def receive() -> Message:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await answered.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)
        answered.set()

    scope = asgi_scope(
        "websocket",
        path,
        f"token={token}".encode(),
        [(b"host", b"test")],
        root_path=root_path,
        subprotocols=[],
    )
    await asyncio.wait_for(app(scope, receive, send), 10)
    return sent


async def test_every_route_works_when_a_proxy_sets_root_path(tmp_path: Path) -> None:
    """A proxy (or a parent app mounting this one) that passes `/dc/...` with root_path `/dc`:
    the hot routes (answered by their lean handlers), the SSE stream and the WebSocket all
    answer, with the headers the `/api/` paths get."""
    async with running(Settings(data_dir=tmp_path / "d")) as small:
        app = small.app
        user = await app.state.store.create_user("rooted", "h")
        token = app.state.signer.issue(user.id).value
        auth = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app, root_path=PREFIX)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            created = await client.post(f"{PREFIX}/api/items", json={"title": "t"}, headers=auth)
            assert created.status_code == 201, created.text
            item = created.json()["id"]
            got = await client.get(f"{PREFIX}/api/items/{item}", headers=auth)
            assert got.status_code == 200 and got.json()["id"] == item
            assert got.headers["cache-control"] == "no-store"
            listed = await client.get(f"{PREFIX}/api/items", params={"limit": 5}, headers=auth)
            assert listed.status_code == 200 and listed.json()["total"] == 1
            # the declared endpoint, when the lean handler hands over: the same rules
            assert (await client.get(f"{PREFIX}/api/items/0", headers=auth)).status_code == 422
        status, headers = await first_of_stream(app, f"{PREFIX}/api/events", token, PREFIX)
        assert status == 200 and headers[b"content-type"].startswith(b"text/event-stream")
        ws = await _ws_opens(app, f"{PREFIX}/ws/items", token, PREFIX)
        assert ws[0] == {"type": "websocket.accept"}, ws


class Recorder:
    """A middleware a deployment might add (tracing, CORS, rate limits): records what it saw."""

    def __init__(self, app: ASGIApp, seen: list[tuple[str, str]]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            self.seen.append((scope["type"], route_path(scope)))
        await self.app(scope, receive, send)


class ConnectionSpy:
    """Stands in for a stream handler: records the `send` it was given, then runs the real one."""

    def __init__(self, handler: ASGIApp, seen: list[object]) -> None:
        self.handler = handler
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(getattr(send, "__self__", None))
        await self.handler(scope, receive, send)


def _stream_endpoints(app: FastAPI) -> list[StreamEndpoint]:
    found = []
    for route in app.routes:
        endpoint = getattr(route, "app", None)
        if isinstance(endpoint, StreamEndpoint):
            found.append(endpoint)
    sse = next(r for r in app.routes if getattr(r, "path", "") == "/api/events")
    lean = getattr(sse, "lean", None)
    found.append(lean.__self__)  # type: ignore[union-attr]
    return found


async def test_middleware_wraps_every_route_under_uvicorn_root_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `uvicorn --root-path /dc` (the proxy strips the prefix), a middleware added to the
    app sees every request: the three hot routes, SSE, WebSocket, the rest; and the stream
    handlers still get uvicorn's connection as `send.__self__` (to see a disconnect and abort
    a stalled client) although `send` passed through every middleware."""
    seen: list[tuple[str, str]] = []
    connections: list[object] = []

    def prepare(app: FastAPI) -> None:
        app.add_middleware(Recorder, seen=seen)
        for endpoint in _stream_endpoints(app):
            monkeypatch.setattr(endpoint, "handler", ConnectionSpy(endpoint.handler, connections))

    settings = Settings(data_dir=tmp_path / "d", environment="development")
    async with serve(settings, root_path=PREFIX, prepare=prepare) as live:
        alice = await live.user("alice")
        async with live.http() as client:
            auth = alice.headers
            item = (await client.post("/api/items", json={"title": "t"}, headers=auth)).json()
            assert (await client.get(f"/api/items/{item['id']}", headers=auth)).status_code == 200
            assert (await client.get("/api/items", headers=auth)).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
            async with aconnect_sse(client, "GET", "/api/events", headers=auth) as source:
                assert source.response.status_code == 200
                hello = await EventStream(source.response, TIMEOUT).expect("connected")
                assert hello.retry is not None
            spec = (await client.get("/openapi.json")).json()
        async with connect(f"{live.ws_url}/ws/items?token={alice.token}&format=json") as ws:
            assert ws.protocol.state.name == "OPEN"
    paths = {path for _, path in seen}
    assert {"/api/items", f"/api/items/{item['id']}", "/healthz", "/api/events"} <= paths
    assert ("websocket", "/ws/items") in seen
    assert spec["servers"] == [{"url": PREFIX}]  # clients of /docs call through the proxy
    assert len(connections) == 2
    assert all(type(c).__module__.startswith("uvicorn.protocols") for c in connections), [
        type(c) for c in connections
    ]


async def test_exception_handlers_apply_to_lean_routes(tmp_path: Path) -> None:
    """An exception handler the app installs answers for a lean handler too."""
    async with running(Settings(data_dir=tmp_path / "d")) as small:
        app = small.app

        async def teapot(request: Request, exc: Exception) -> Response:
            return PlainTextResponse("no such item, says the handler", status_code=418)

        app.add_exception_handler(NotFound, teapot)
        token = app.state.signer.issue((await app.state.store.create_user("u", "h")).id).value
        r = await small.client.get(
            "/api/items/999999", headers={"Authorization": f"Bearer {token}"}
        )
        assert (r.status_code, r.text) == (418, "no such item, says the handler")


async def test_a_token_is_verified_once_per_request(tmp_path: Path) -> None:
    """A lean handler checks the session first; when it hands an odd request to the declared
    endpoint, the endpoint uses that check instead of verifying the token again."""
    async with running(Settings(data_dir=tmp_path / "d")) as small:
        app = small.app
        token = app.state.signer.issue((await app.state.store.create_user("u", "h")).id).value
        signer = app.state.signer
        calls: list[str] = []
        verify: Callable[[str], Any] = signer.verify

        def counting(text: str) -> Any:
            calls.append(text)
            return verify(text)

        signer.verify = counting
        auth = {"Authorization": f"Bearer {token}"}
        for path, status in [
            ("/api/items?limit=0", 422),  # the lean handler hands over
            ("/api/items/abc", 422),
            ("/api/items?limit=2", 200),  # the lean handler answers
            ("/api/stats", 200),  # a plain FastAPI route
        ]:
            calls.clear()
            r = await small.client.get(path, headers=auth)
            assert r.status_code == status, (path, r.text)
            assert len(calls) == 1, path


def test_openapi_declares_the_hot_routes_from_the_one_table(tmp_path: Path) -> None:
    """The hot routes and the SSE stream stay in the OpenAPI description, with the parameter
    rules of service.wire (the table their lean handlers read too)."""
    spec = create_app(Settings(data_dir=tmp_path / "d")).openapi()
    paths = spec["paths"]

    def params(path: str, method: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in paths[path][method].get("parameters", [])}

    def bounds(schema: dict[str, Any]) -> tuple[int, int]:
        # AsciiInt's schema says ge/le where JSON Schema says minimum/maximum (as before)
        return schema.get("minimum", schema.get("ge")), schema.get("maximum", schema.get("le"))

    item_id = params("/api/items/{item_id}", "get")["item_id"]["schema"]
    assert bounds(item_id) == (ID.low, ID.high)
    listing = params("/api/items", "get")
    expected = {
        "page": (PAGE.low, PAGE.high, PAGE_DEFAULT),
        "limit": (LIMIT.low, LIMIT.high, LIMIT_DEFAULT),
    }
    for name, (low, high, default) in expected.items():
        schema = listing[name]["schema"]
        assert (*bounds(schema), schema["default"]) == (low, high, default)
    assert bounds(listing["owner_id"]["schema"]["anyOf"][0]) == (ID.low, ID.high)
    assert listing["status"]["schema"]["anyOf"][0]["enum"] == list(STATUSES)
    assert listing["q"]["schema"]["anyOf"][0]["maxLength"] == QUERY_MAX_LENGTH
    create = paths["/api/items"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in create["parameters"]}
    assert create["requestBody"]["content"]["application/protobuf"]["x-protobuf-message"] == (
        pb.ItemCreate.DESCRIPTOR.full_name
    )
    events = params("/api/events", "get")
    assert {"owner_id", "status", "last_event_id", "token", "Last-Event-ID"} <= set(events)
    assert "text/event-stream" in paths["/api/events"]["get"]["responses"]["200"]["content"]


async def test_stream_endpoint_hands_the_server_connection_on() -> None:
    """StreamEndpoint: the handler's `send` goes through the given (middleware) `send`, carries
    the server's connection from the scope, and the scope is marked as a stream (the request
    observer does not time it)."""
    server = object()
    got: dict[str, Any] = {}
    passed: list[Message] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        got["connection"] = getattr(send, "__self__", None)
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def outer_send(message: Message) -> None:
        passed.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    scope: dict[str, Any] = {"type": "http", SERVER_CONNECTION: server}
    await StreamEndpoint(handler)(scope, receive, outer_send)
    assert got["connection"] is server
    assert passed == [{"type": "http.response.start", "status": 200, "headers": []}]
    assert scope["duckcast.stream"] is True


def test_the_root_path_setting_is_uvicorns(tmp_path: Path) -> None:
    """DUCKCAST_ROOT_PATH reaches uvicorn in `serve` and in every gunicorn worker (whose
    --root-path the middleware test above serves under)."""
    settings = Settings(data_dir=tmp_path / "d", root_path=PREFIX)
    assert uvicorn_options(settings)["root_path"] == PREFIX


def test_a_root_path_is_a_path_prefix(tmp_path: Path) -> None:
    for bad in ("dc", "/dc/", "//"):
        with pytest.raises(ValueError, match="root_path"):
            Settings(data_dir=tmp_path, root_path=bad)


class Stamp:
    """A middleware that marks every answer it sees."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-stamp", b"1")]
            await send(message)

        await self.app(scope, receive, stamped)


async def test_a_middleware_sees_the_exception_handlers_answers(tmp_path: Path) -> None:
    """The exception handlers run inside every middleware (service.api.edge.ExceptionLayer):
    a 401 from a lean handler, a 404 from the router and a 422 from FastAPI's validation
    pass through a middleware the app added, as its own answers do."""
    application = create_app(Settings(data_dir=tmp_path / "d"))
    application.add_middleware(Stamp)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            token = application.state.signer.issue(
                (await application.state.store.create_user("u", "h")).id
            ).value
            auth = {"Authorization": f"Bearer {token}"}
            answers = [
                await client.get("/api/items/1"),  # no token: 401 from the lean handler
                await client.get("/no/such/route"),  # 404 from the router
                await client.get("/api/items/1", headers=auth),  # 404 from the store
                await client.get("/api/items?limit=0", headers=auth),  # 422
            ]
    assert [r.status_code for r in answers] == [401, 404, 404, 422]
    assert all(r.headers.get("x-stamp") == "1" for r in answers)
    assert all(r.headers["content-type"] == "application/json" for r in answers)


async def test_an_error_after_the_response_started_is_not_answered_again(
    tmp_path: Path,
) -> None:
    """A handled exception raised once the response has started cannot be answered: it goes
    on to Edge, which logs it, and the client gets the response as it was started."""
    application = create_app(Settings(data_dir=tmp_path / "d"))

    class Half:  # a plain ASGI endpoint, as the lean handlers are: no route-level handling
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise NotFound("too late")

    application.router.routes.insert(0, Route("/half", Half()))
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async with application.router.lifespan_context(application):
        scope = asgi_scope("http", "/half", b"", [(b"host", b"t")], method="GET")
        await application(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert sent[0]["status"] == 200


async def test_uploaded_files_are_closed_after_the_request(tmp_path: Path) -> None:
    """FastAPI puts a request's form on the exception layer's file stack, closed when the route
    returns (the uploaded file's spool is released)."""
    application = create_app(Settings(data_dir=tmp_path / "d"))
    kept: list[UploadFile] = []

    @application.post("/spool")
    async def spool(file: UploadFile) -> dict[str, bool]:
        kept.append(file)
        return {"open": not file.file.closed}

    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post("/spool", files={"file": ("a.txt", b"abc")})
    assert r.json() == {"open": True}
    assert kept[0].file.closed


HITS = "duckcast_read_cache_requests_total"


class AppendInPlace:
    """A middleware that adds a header to the answer's own list, as MutableHeaders does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def add(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"].append((b"x-added", b"1"))
            await send(message)

        await self.app(scope, receive, add)


async def test_a_cached_answers_head_is_made_once_and_never_shared(tmp_path: Path) -> None:
    """A read from the worker's cache answers the head Response() would make (ETag, length,
    type, in its order), kept with the entry; a middleware that changes the answer's header
    list in place changes that answer only."""
    application = create_app(Settings(data_dir=tmp_path / "d"))
    application.add_middleware(AppendInPlace)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            token = application.state.signer.issue(
                (await application.state.store.create_user("u", "h")).id
            ).value
            auth = {"Authorization": f"Bearer {token}"}
            item = (await client.post("/api/items", json={"title": "t"}, headers=auth)).json()
            proto = {**auth, "Accept": "application/protobuf"}
            hits = REGISTRY.get_sample_value(HITS, {"kind": "item", "result": "hit"}) or 0
            answers = [
                await client.get(f"/api/items/{item['id']}", headers=headers)
                for headers in (auth, auth, auth, proto, proto)
            ]
            after = REGISTRY.get_sample_value(HITS, {"kind": "item", "result": "hit"}) or 0
    assert after - hits >= 3  # at least the repeats came from the cache
    for r in answers:
        assert r.status_code == 200
        assert r.headers.get_list("x-added") == ["1"]
        assert r.headers["etag"] == f'"{item["version"]}"'
        assert int(r.headers["content-length"]) == len(r.content)
        own = [k for k, _ in r.headers.raw if k in (b"etag", b"content-length", b"content-type")]
        assert own == [b"etag", b"content-length", b"content-type"]  # as Response() has them
    assert [r.headers["content-type"] for r in answers] == [
        "application/json",
        "application/json",
        "application/json",
        "application/protobuf",
        "application/protobuf",
    ]


def test_the_list_query_readings_kept_are_bounded() -> None:
    """The lean list handler keeps its readings of short query strings only, at most
    LIST_QUERIES of them, and a kept reading is the reading (test_fastpath.py compares the
    answers with the declared endpoint's for generated query strings)."""
    from service.api.routes import items

    def read(raw: bytes) -> spb.ListItems | None:
        scope = asgi_scope("http", "/api/items", raw, [], method="GET")
        return items._list_query(Request(scope))

    items._list_queries.clear()
    first = read(b"limit=20")
    assert first is not None and first.limit == 20 and read(b"limit=20") is first
    assert read(b"limit=0") is None and b"limit=0" in items._list_queries
    long = b"q=" + b"x" * items.LIST_QUERY_KEPT_BYTES
    assert read(long) is not None and long not in items._list_queries
    for n in range(3 * items.LIST_QUERIES):
        assert read(b"limit=%d" % (n % 100 + 1)) is not None
        read(b"page=%d" % (n + 1))
    assert len(items._list_queries) <= items.LIST_QUERIES
