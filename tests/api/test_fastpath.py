"""The fast path (service.api.fastpath) answers exactly what the FastAPI routes answer.

Every request below goes once through the app (fast path first) and once straight into
FastAPI's own stack, against the same store: status, content type and body must be identical,
for the cases the fast path serves and for those it hands over."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from service.api import fastpath
from service.api.app import create_app
from service.config import Settings
from service.pb import duckcast_pb2 as pb
from tests.conftest import signup

PROTO = "application/x-protobuf"
# Only ASCII digits are integers, on both paths: int() takes every one of these.
NOT_INTEGERS = (
    "/api/items/\u0661\u0662",
    "/api/items/%C2%B2",
    "/api/items/+1",
    "/api/items/1_0",
    "/api/items/%201",
    "/api/items?page=%2B1",
    "/api/items?limit=1_0",
    "/api/items?owner_id=\u0661",
    "/api/items?owner_id=",
    "/api/items?page=1.0",
)


@pytest.fixture
async def pair(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    app = create_app(settings)

    async def fastapi_only(scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(app, scope, receive, send)

    async with app.router.lifespan_context(app):
        fast = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        slow = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=fastapi_only), base_url="http://t"
        )
        async with fast, slow:
            yield fast, slow


def _comparable(r: httpx.Response) -> tuple[int, str, str | None, object]:
    body: object = r.content
    if r.headers.get("content-type", "").startswith("application/json"):
        body = orjson.loads(r.content)
        if isinstance(body, dict):
            # created/updated timestamps and ids differ between two creates
            for key in ("id", "created_at", "updated_at"):
                body.pop(key, None)
    return r.status_code, r.headers.get("content-type", ""), r.headers.get("etag"), body


async def test_fast_and_fastapi_paths_answer_alike(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    fast, slow = pair
    alice = await signup(fast, "alice")
    fast.cookies.clear()  # login set the session cookie on this client only
    created = await fast.post("/api/items", json={"title": "seed", "priority": 3}, headers=alice)
    item_id = created.json()["id"]
    proto = {**alice, "Accept": PROTO}
    cases: list[tuple[str, str, dict[str, str], bytes | None]] = [
        ("GET", f"/api/items/{item_id}", alice, None),
        ("GET", f"/api/items/{item_id}", proto, None),
        ("GET", "/api/items/999999", alice, None),  # 404
        ("GET", "/api/items/0", alice, None),  # 422, handed over
        ("GET", "/api/items/abc", alice, None),
        *(("GET", url, alice, None) for url in NOT_INTEGERS),
        ("GET", f"/api/items/{item_id}", {}, None),  # 401, handed over
        ("GET", "/api/items?limit=5&status=active&q=see", alice, None),
        ("GET", "/api/items?owner_id=1&page=1", proto, None),
        ("GET", "/api/items?limit=101", alice, None),  # 422
        ("GET", "/api/items?status=bogus", alice, None),
        ("GET", "/api/items?unknown=1", alice, None),
        ("POST", "/api/items", {**alice, "Content-Type": "application/json"}, b'{"title": "x"}'),
        ("POST", "/api/items", {**alice, "Content-Type": "application/json"}, b'{"title": '),
        ("POST", "/api/items", {**alice, "Content-Type": "application/json"}, b'{"title": 5}'),
        ("POST", "/api/items", {**alice, "Content-Type": "text/plain"}, b"x"),
        ("POST", "/api/items", {**alice, "Content-Type": PROTO}, b"\xff\xff"),
        (
            "POST",
            "/api/items",
            {**alice, "Content-Type": PROTO, "Accept": PROTO},
            pb.ItemCreate(title="p").SerializeToString(),
        ),
        ("POST", "/api/items", {"Content-Type": "application/json"}, b'{"title": "x"}'),
    ]
    for method, url, headers, body in cases:
        a = await fast.request(method, url, headers=headers, content=body)
        b = await slow.request(method, url, headers=headers, content=body)
        if a.headers.get("content-type", "").startswith(PROTO) and a.status_code == 200:
            assert a.content == b.content, (method, url)
        elif a.headers.get("content-type", "").startswith(PROTO) and a.status_code == 201:
            got, want = pb.Item.FromString(a.content), pb.Item.FromString(b.content)
            assert (got.title, got.owner_id, got.version) == (want.title, want.owner_id, 1)
            continue
        assert _comparable(a) == _comparable(b), (method, url, a.text, b.text)
        if url in NOT_INTEGERS:
            assert a.status_code == 422, (url, a.text)


async def test_fast_path_serves_the_hot_cases_and_hands_over_the_rest(
    pair: tuple[httpx.AsyncClient, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison above would pass if the fast path never served anything: count."""
    fast, _ = pair
    alice = await signup(fast, "bob")
    fast.cookies.clear()
    served: list[bool] = []
    original = fastpath.serve

    async def counting(scope: Scope, receive: Receive, send: Send) -> bool:
        served.append(await original(scope, receive, send))
        return served[-1]

    monkeypatch.setattr(fastpath, "serve", counting)
    r = await fast.post("/api/items", json={"title": "a"}, headers=alice)
    await fast.get(f"/api/items/{r.json()['id']}", headers=alice)
    await fast.get("/api/items?limit=3", headers=alice)
    assert served == [True, True, True]
    await fast.get("/api/items?limit=0", headers=alice)
    await fast.get("/api/items")
    await fast.get("/api/stats", headers=alice)
    assert served[3:] == [False, False, False]
