"""The JSON bodies mirror the protobuf messages in protos/ field for field, and both formats
carry the same values."""

from __future__ import annotations

from typing import Any

import httpx
from google.protobuf.message import Message

from service.pb import duckcast_pb2 as pb
from tests.api.conftest import PASSWORD, Account
from tests.api.wire import JSON, PROTOBUF, Wire


def proto_fields(message_cls: type[Message]) -> set[str]:
    return {f.name for f in message_cls.DESCRIPTOR.fields}


def assert_mirrors(body: dict[str, Any], message_cls: type[Message]) -> None:
    assert set(body) == proto_fields(message_cls), (message_cls.DESCRIPTOR.name, sorted(body))


async def test_json_mirrors_protobuf_messages(client: httpx.AsyncClient) -> None:
    """For User, LoginResponse, Item, ItemList, ItemPage, Stats and UploadResult the set of JSON
    keys the API returns equals the set of fields of the protobuf message (nested too); ids
    are JSON numbers and timestamps RFC 3339 UTC strings."""
    registered = await client.post(
        "/api/register", json={"username": "shapes", "password": PASSWORD}
    )
    assert registered.status_code == 201
    assert_mirrors(registered.json(), pb.User)

    login = await client.post("/api/login", json={"username": "shapes", "password": PASSWORD})
    assert login.status_code == 200
    assert_mirrors(login.json(), pb.LoginResponse)
    assert_mirrors(login.json()["user"], pb.User)
    headers = {"Authorization": f"Bearer {login.json()['token']}"}
    client.cookies.clear()

    me = await client.get("/api/me", headers=headers)
    assert_mirrors(me.json(), pb.User)

    item = (await client.post("/api/items", json={"title": "t"}, headers=headers)).json()
    assert_mirrors(item, pb.Item)
    for key in ("id", "owner_id", "priority", "version"):
        assert type(item[key]) is int, key
    for key in ("created_at", "updated_at"):
        assert isinstance(item[key], str) and item[key].endswith("Z"), key

    created = (
        await client.post("/api/items/bulk", json={"items": [{"title": "u"}]}, headers=headers)
    ).json()
    assert_mirrors(created, pb.ItemList)
    assert_mirrors(created["items"][0], pb.Item)

    page = (await client.get("/api/items", headers=headers)).json()
    assert_mirrors(page, pb.ItemPage)
    assert_mirrors(page["items"][0], pb.Item)
    assert all(type(page[k]) is int for k in ("total", "page", "pages", "limit", "seq"))

    stats = (await client.get("/api/stats", headers=headers)).json()
    assert_mirrors(stats, pb.Stats)

    upload = await client.post("/api/upload", files={"file": ("a.txt", b"abc")}, headers=headers)
    assert upload.status_code == 201
    assert_mirrors(upload.json(), pb.UploadResult)


async def test_json_and_protobuf_carry_the_same_values(
    client: httpx.AsyncClient, alice: Account
) -> None:
    """Every negotiated read (me, item, page, stats) decodes to identical values from JSON and
    from protobuf."""
    r = await client.post(
        "/api/items",
        json={"title": "same", "description": "d", "status": "completed", "priority": 33},
        headers=alice.headers,
    )
    item_id = r.json()["id"]
    reads = [
        ("/api/me", pb.User),
        (f"/api/items/{item_id}", pb.Item),
        ("/api/items", pb.ItemPage),
        ("/api/stats", pb.Stats),
    ]
    for url, message_cls in reads:
        views = []
        for media in (JSON, PROTOBUF):
            got = await client.get(url, headers={"Accept": media, **alice.headers})
            assert got.status_code == 200
            views.append(Wire(media).decode(got, message_cls))
        assert views[0] == views[1], url
