"""Headers and error answers that hold for every route (service.api.edge.Edge):
`nosniff` on every HTTP answer, `Cache-Control: no-store` on everything under /api/, no Host
reflection in redirects, 500s in the negotiated format without internals, and no internal
address in any 503. Served by a real uvicorn, the lean handlers and the streams included."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute

from service.api.app import create_app
from service.api.edge import _relative_location
from service.config import Settings
from service.pb import duckcast_pb2 as pb
from tests.api.wire import JSON, PROTOBUF
from tests.realtime.conftest import Account, Live, serve

Row = tuple[str, str, dict[str, Any]]  # method, path, httpx request kwargs ("auth": who)

ITEM = {"title": "t"}
PNG = {"file": ("a.png", b"\x89PNG....", "image/png")}

# Every route, with a request that reaches it. "{item}", "{upload}" and "{other}" are filled
# in per test; "auth" says whose token goes along (None: none).
TABLE: list[Row] = [
    ("GET", "/", {}),
    ("GET", "/docs", {}),
    ("GET", "/docs/oauth2-redirect", {}),
    ("GET", "/docs/assets/{asset}", {}),
    ("GET", "/static/js/app.js", {}),
    ("GET", "/redoc", {}),
    ("GET", "/openapi.json", {}),
    ("GET", "/healthz", {}),
    ("GET", "/readyz", {}),
    ("GET", "/metrics", {}),
    ("GET", "/protos/{proto}.proto", {}),
    ("GET", "/nowhere", {}),  # 404
    ("POST", "/api/register", {"json": {"username": "newcomer", "password": "long enough"}}),
    ("POST", "/api/login", {"json": {"username": "nobody", "password": "long enough"}}),
    ("POST", "/api/logout", {}),
    ("GET", "/api/me", {"auth": "alice"}),
    ("GET", "/api/me", {}),  # 401
    ("GET", "/api/items", {"auth": "alice"}),  # hot path
    ("GET", "/api/items", {"auth": "alice", "params": {"page": "x"}}),  # FastAPI's 422
    ("POST", "/api/items", {"auth": "alice", "json": ITEM}),  # hot path
    ("POST", "/api/items/bulk", {"auth": "alice", "json": {"items": [ITEM]}}),
    ("GET", "/api/items/{item}", {"auth": "alice"}),  # hot path
    ("PUT", "/api/items/{item}", {"auth": "alice", "json": ITEM}),
    ("PATCH", "/api/items/{item}", {"auth": "alice", "json": ITEM}),
    ("DELETE", "/api/items/{item}", {"auth": "bob"}),  # 403
    ("GET", "/api/stats", {"auth": "alice"}),
    ("GET", "/api/events", {"auth": "alice"}),  # a live SSE stream: headers, then close
    ("GET", "/api/events", {}),  # 401
    ("POST", "/api/upload", {"auth": "alice", "files": PNG}),
    ("GET", "/uploads/{upload}", {}),
    ("DELETE", "/api/uploads/{upload}", {"auth": "bob"}),  # 403
    ("DELETE", "/api/uploads/{other}", {"auth": "alice"}),  # 404
]


def _routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path template) of every HTTP route the app serves."""
    found = set()
    for route in _routes(app.routes):
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                found.add((method, route.path))  # type: ignore[attr-defined]
    return found


def template(path: str) -> str:
    """The path with its placeholders unnamed: /api/items/{item} ~ /api/items/{item_id}."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_the_table_covers_every_route(tmp_path: Path) -> None:
    """A new route must join TABLE (and so get its headers checked)."""
    app = create_app(Settings(data_dir=tmp_path / "data"))
    covered = {(method, template(path)) for method, path, _ in TABLE}
    missing = {(m, p) for m, p in app_routes(app) if (m, template(p)) not in covered}
    assert not missing, f"routes missing from TABLE: {sorted(missing)}"


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    async with serve(Settings(data_dir=tmp_path / "data")) as server:
        yield server


async def test_security_headers_on_every_route(live: Live) -> None:
    """Every answer carries `X-Content-Type-Options: nosniff`; every answer under /api/
    carries `Cache-Control: no-store` (and no other Cache-Control); /uploads/ stays cacheable
    (public, immutable names)."""
    accounts: dict[str, Account] = {
        "alice": await live.user("alice"),
        "bob": await live.user("bob"),
    }
    async with live.http() as client:
        alice = accounts["alice"].headers
        item = (await client.post("/api/items", json=ITEM, headers=alice)).json()["id"]
        upload = (await client.post("/api/upload", files=PNG, headers=alice)).json()["filename"]
        names = {
            "item": item,
            "upload": upload,
            "other": "0" * 32 + ".png",
            "proto": "duckcast",
            "asset": "swagger-ui.css",
        }
        seen = []
        for method, path, options in TABLE:
            kwargs = dict(options)
            who = kwargs.pop("auth", None)
            if who is not None:
                kwargs["headers"] = accounts[who].headers
            url = path.format(**names)
            async with client.stream(method, url, **kwargs) as r:
                seen.append((method, path, r.status_code))
                assert r.status_code < 500, (method, path, r.status_code)
                assert r.headers.get_list("x-content-type-options") == ["nosniff"], (method, path)
                cache = r.headers.get_list("cache-control")
                if url.startswith("/api/"):
                    assert cache == ["no-store"], (method, path, cache)
                else:
                    assert "no-store" not in cache, (method, path)
                if path.startswith("/uploads/"):
                    assert cache == ["public, max-age=31536000, immutable"]
    statuses = {(m, p): s for m, p, s in seen}
    assert statuses[("GET", "/api/events")] in (200, 401)  # both rows ran
    assert statuses[("DELETE", "/api/items/{item}")] == 403
    assert statuses[("DELETE", "/api/uploads/{other}")] == 404


async def test_redirects_do_not_reflect_the_host_header(live: Live) -> None:
    """The trailing-slash redirect answers with a path, not with whatever Host the client
    sent (a poisoned cache would send everyone to the attacker's host)."""
    async with live.http() as client:
        for path in ("/api/items/", "/healthz/"):
            r = await client.get(path, headers={"Host": "evil.example"})
            assert r.status_code == 307, path
            assert r.headers["location"] == path.rstrip("/"), r.headers["location"]


def test_a_relative_location_is_never_protocol_relative() -> None:
    """`//host/…` would be read by a browser as another host: leading slashes collapse."""
    scope = {"headers": [(b"host", b"evil.example")]}
    assert _relative_location(scope, b"http://evil.example//other.example/x") == b"/other.example/x"
    assert _relative_location(scope, b"https://evil.example") == b"/"
    assert _relative_location(scope, b"http://elsewhere.example/x") == b"http://elsewhere.example/x"


@pytest.mark.parametrize("media", [JSON, PROTOBUF])
async def test_unexpected_errors_are_negotiated_500s_without_internals(
    tmp_path: Path, media: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception nobody handled (in a FastAPI route, or in a request the hot path serves)
    answers 500 in the negotiated format with a fixed message: no exception text, no
    traceback; the traceback goes to the log."""
    app = create_app(Settings(data_dir=tmp_path / "data"))

    async def boom() -> None:
        raise RuntimeError("internal detail /srv/secret/path")

    app.add_api_route("/api/boom", boom)
    async with app.router.lifespan_context(app):
        token = app.state.signer.issue((await app.state.store.create_user("u", "h")).id).value

        async def broken_get_item(item_id: int) -> pb.Item:
            raise RuntimeError("internal detail /srv/secret/path")

        app.state.store.get_item = broken_get_item  # a bug deep in the hot path
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"Accept": media, "Authorization": f"Bearer {token}"}
            for path in ("/api/boom", "/api/items/1"):
                r = await client.get(path, headers=headers)
                assert r.status_code == 500, path
                assert r.headers["content-type"] == media
                assert r.headers["x-content-type-options"] == "nosniff"
                assert b"internal detail" not in r.content and b"Traceback" not in r.content
                if media == JSON:
                    assert r.json() == {"detail": "internal server error"}
                else:
                    assert pb.Error.FromString(r.content).code == 500
    assert "internal detail" in caplog.text  # logged for the operator


async def test_store_outages_do_not_name_internal_addresses(tmp_path: Path) -> None:
    """A worker whose store is unreachable answers 503 (and /readyz 503) without the store's
    socket path or host in the body or headers."""
    secret_dir = tmp_path / "internal-store-dir"
    url = f"unix:{secret_dir}/store.sock"  # nothing listens there
    app = create_app(Settings(data_dir=tmp_path / "data", store_url=url))
    async with app.router.lifespan_context(app):
        token = app.state.signer.issue(1).value
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = [
                await client.get("/api/items/1", headers={"Authorization": f"Bearer {token}"}),
                await client.get("/api/items", headers={"Authorization": f"Bearer {token}"}),
                await client.get("/readyz"),
            ]
    for r in answers:
        assert r.status_code == 503
        text = r.text + str(r.headers)
        assert str(secret_dir) not in text and "store.sock" not in text, text
