"""Items: create, read, list, bulk, update, delete and stats, in JSON and in protobuf."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from service.pb import duckcast_pb2 as pb
from tests.api.conftest import Account
from tests.api.wire import JSON, PROTOBUF, X_PROTOBUF, Wire, error_message, json_to_dict

ITEM_FIELDS = {
    "id",
    "title",
    "description",
    "status",
    "priority",
    "owner_id",
    "created_at",
    "updated_at",
    "version",
}


async def create(client: httpx.AsyncClient, who: Account, **fields: Any) -> dict[str, Any]:
    r = await client.post("/api/items", json=fields, headers=who.headers)
    assert r.status_code == 201, r.text
    item: dict[str, Any] = r.json()
    return item


async def bulk(
    client: httpx.AsyncClient, who: Account, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    r = await client.post("/api/items/bulk", json={"items": items}, headers=who.headers)
    assert r.status_code == 201, r.text[:300]
    created: list[dict[str, Any]] = r.json()["items"]
    return created


async def listing(client: httpx.AsyncClient, who: Account, **params: Any) -> dict[str, Any]:
    r = await client.get("/api/items", params=params, headers=who.headers)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


async def stats(client: httpx.AsyncClient, who: Account) -> dict[str, Any]:
    r = await client.get("/api/stats", headers=who.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# -- create and read ----------------------------------------------------------------------------


async def test_create_defaults_and_read_back(
    client: httpx.AsyncClient, alice: Account, wire: Wire
) -> None:
    """POST /api/items with only a title answers 201 with status active, priority 0, empty
    description, version 1, owner the caller; GET /api/items/{id} returns the same item."""
    r = await wire.send(
        client, "POST", "/api/items", pb.ItemCreate, {"title": "only a title"}, auth=alice.headers
    )
    assert r.status_code == 201, r.content
    item = wire.decode(r, pb.Item)
    assert set(item) == ITEM_FIELDS
    assert item["title"] == "only a title"
    assert item["description"] == ""
    assert item["status"] == "active"
    assert item["priority"] == 0
    assert item["version"] == 1
    assert item["owner_id"] == alice.id
    assert isinstance(item["id"], int) and item["id"] >= 1
    assert item["created_at"] == item["updated_at"]
    assert abs(item["created_at"] - datetime.now(UTC)) < timedelta(minutes=5)

    got = await wire.send(client, "GET", f"/api/items/{item['id']}", auth=alice.headers)
    assert got.status_code == 200
    assert wire.decode(got, pb.Item) == item


async def test_create_with_every_field(
    client: httpx.AsyncClient, alice: Account, wire: Wire
) -> None:
    """Every field given on create is stored and returned as given."""
    fields = {
        "title": "T" * 200,
        "description": "d\u00e9scription \u2603 " * 10,
        "status": "completed",
        "priority": 100,
    }
    r = await wire.send(client, "POST", "/api/items", pb.ItemCreate, fields, auth=alice.headers)
    assert r.status_code == 201, r.content
    item = wire.decode(r, pb.Item)
    assert {k: item[k] for k in fields} == fields
    got = await client.get(f"/api/items/{item['id']}", headers=alice.headers)
    assert {k: got.json()[k] for k in fields} == fields


async def test_any_user_reads_any_item(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    """Any signed-in user may read (get and list) every item, whoever owns it."""
    item = await create(client, alice, title="alice's")
    r = await client.get(f"/api/items/{item['id']}", headers=bob.headers)
    assert r.status_code == 200 and r.json() == item
    assert [i["id"] for i in (await listing(client, bob))["items"]] == [item["id"]]


async def test_unknown_item_is_404(client: httpx.AsyncClient, alice: Account, wire: Wire) -> None:
    """GET, PUT, PATCH and DELETE of an id that never existed answer 404 in the negotiated
    error format."""
    await create(client, alice, title="exists")
    for method, message_cls, body in (
        ("GET", None, None),
        ("PUT", pb.ItemUpdate, {"title": "x"}),
        ("PATCH", pb.ItemUpdate, {"priority": 3}),
        ("DELETE", None, None),
    ):
        for item_id in (999_999, 2**63 - 1):
            r = await wire.send(
                client, method, f"/api/items/{item_id}", message_cls, body, auth=alice.headers
            )
            assert r.status_code == 404, (method, item_id, r.status_code)
            wire.error(r)


async def test_formats_agree(client: httpx.AsyncClient, alice: Account) -> None:
    """The same item reads identically in JSON, application/protobuf and
    application/x-protobuf, whatever format created it; the response format follows Accept,
    not the request's Content-Type."""
    by_pb = await client.post(
        "/api/items",
        content=Wire(PROTOBUF).body(pb.ItemCreate, {"title": "via pb", "priority": 7}),
        headers={"Content-Type": X_PROTOBUF, **alice.headers},
    )
    assert by_pb.status_code == 201
    assert by_pb.headers["content-type"].startswith(JSON)
    item_id = by_pb.json()["id"]
    views = []
    for media in (JSON, PROTOBUF, X_PROTOBUF):
        r = await client.get(f"/api/items/{item_id}", headers={"Accept": media, **alice.headers})
        assert r.status_code == 200
        views.append(Wire(media).decode(r, pb.Item))
    assert views[0] == views[1] == views[2]
    assert views[0]["priority"] == 7 and views[0]["title"] == "via pb"


# -- list -------------------------------------------------------------------------------------


async def test_list_pagination(client: httpx.AsyncClient, alice: Account, wire: Wire) -> None:
    """GET /api/items pages newest first with correct total, page, pages and limit; pages
    partition the whole set; past the last page is empty; limit defaults to 20."""
    created = await bulk(client, alice, [{"title": f"item {n}"} for n in range(25)])
    all_ids = sorted((i["id"] for i in created), reverse=True)
    seen: list[int] = []
    for page_no in (1, 2, 3, 4):
        r = await wire.send(
            client, "GET", "/api/items", auth=alice.headers, params={"page": page_no, "limit": 10}
        )
        assert r.status_code == 200
        page = wire.decode(r, pb.ItemPage)
        assert (page["total"], page["page"], page["pages"], page["limit"]) == (25, page_no, 3, 10)
        expected = {1: 10, 2: 10, 3: 5, 4: 0}[page_no]
        assert len(page["items"]) == expected
        seen += [i["id"] for i in page["items"]]
    assert seen == all_ids  # newest (highest id) first, no overlap, nothing missing
    default = wire.decode(
        await wire.send(client, "GET", "/api/items", auth=alice.headers), pb.ItemPage
    )
    assert (default["page"], default["limit"], default["pages"]) == (1, 20, 2)
    assert [i["id"] for i in default["items"]] == all_ids[:20]


async def test_list_newest_first_across_owners(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    """The newest item comes first regardless of who created it or what was updated later."""
    a1 = await create(client, alice, title="first")
    b1 = await create(client, bob, title="second")
    a2 = await create(client, alice, title="third")
    r = await client.patch(f"/api/items/{a1['id']}", json={"priority": 9}, headers=alice.headers)
    assert r.status_code == 200
    ids = [i["id"] for i in (await listing(client, alice))["items"]]
    assert ids == [a2["id"], b1["id"], a1["id"]]


async def test_list_filters(
    client: httpx.AsyncClient, alice: Account, bob: Account, wire: Wire
) -> None:
    """owner_id, status and q narrow the list and its total; q matches a substring of the
    title case-insensitively (not the description); filters combine."""
    a = await bulk(
        client,
        alice,
        [
            {"title": "Buy MILK", "status": "active"},
            {"title": "milkshake", "status": "completed"},
            {"title": "silk scarf", "description": "milk"},
        ],
    )
    b = await bulk(
        client,
        bob,
        [
            {"title": "bob's milk run", "status": "completed"},
            {"title": "bob other", "status": "active"},
        ],
    )

    async def ids(**params: Any) -> list[int]:
        r = await wire.send(client, "GET", "/api/items", auth=alice.headers, params=params)
        assert r.status_code == 200, r.content
        page = wire.decode(r, pb.ItemPage)
        assert page["total"] == len(page["items"])
        assert page["pages"] == math.ceil(page["total"] / page["limit"])
        return [i["id"] for i in page["items"]]

    assert await ids(owner_id=alice.id) == [a[2]["id"], a[1]["id"], a[0]["id"]]
    assert await ids(owner_id=bob.id) == [b[1]["id"], b[0]["id"]]
    assert await ids(status="completed") == [b[0]["id"], a[1]["id"]]
    assert await ids(status="active") == [b[1]["id"], a[2]["id"], a[0]["id"]]
    assert await ids(q="milk") == [b[0]["id"], a[1]["id"], a[0]["id"]]
    assert await ids(q="mIlK") == [b[0]["id"], a[1]["id"], a[0]["id"]]
    assert await ids(q="SHAKE") == [a[1]["id"]]
    assert await ids(q="milk", owner_id=alice.id, status="active") == [a[0]["id"]]
    assert await ids(q="no such words") == []
    assert await ids(q="%") == [] and await ids(q="_") == []  # literal text, not a pattern
    assert await ids(owner_id=999_999) == []


async def test_list_rejects_bad_query(
    client: httpx.AsyncClient, alice: Account, wire: Wire
) -> None:
    """limit over 100 (or under 1), page 0, an unknown status, non-numeric or out-of-range
    owner_id and an over-long q answer 422 naming the parameter; limit=100 is accepted."""
    await create(client, alice, title="x")
    ok = await client.get("/api/items", params={"limit": 100}, headers=alice.headers)
    assert ok.status_code == 200 and ok.json()["limit"] == 100
    cases: list[tuple[dict[str, Any], str]] = [
        ({"limit": 101}, "limit"),
        ({"limit": 0}, "limit"),
        ({"limit": -5}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"page": 0}, "page"),
        ({"page": -1}, "page"),
        ({"page": 2**70}, "page"),
        ({"page": "one"}, "page"),
        ({"status": "done"}, "status"),
        ({"owner_id": "me"}, "owner_id"),
        ({"owner_id": 0}, "owner_id"),
        ({"owner_id": 2**70}, "owner_id"),
        ({"q": "q" * 201}, "q"),
    ]
    for params, field in cases:
        r = await wire.send(client, "GET", "/api/items", auth=alice.headers, params=params)
        assert r.status_code == 422, (params, r.status_code)
        assert field in wire.error(r), (params, wire.error(r))


async def test_seq_counts_every_change(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    """`seq` on a page is the last change event: +1 per create, update and delete, +n for a
    bulk of n; unchanged by reads and by rejected writes."""
    seq0 = (await listing(client, alice))["seq"]
    item = await create(client, alice, title="a")
    assert (await listing(client, alice))["seq"] == seq0 + 1
    r = await client.put(f"/api/items/{item['id']}", json={"title": "b"}, headers=alice.headers)
    assert r.status_code == 200
    assert (await listing(client, alice))["seq"] == seq0 + 2
    await bulk(client, alice, [{"title": "x"}, {"title": "y"}, {"title": "z"}])
    assert (await listing(client, alice))["seq"] == seq0 + 5
    # rejected writes: not the owner, invalid, unknown id
    assert (
        await client.patch(f"/api/items/{item['id']}", json={"title": "no"}, headers=bob.headers)
    ).status_code == 403
    assert (
        await client.patch(
            f"/api/items/{item['id']}", json={"priority": 101}, headers=alice.headers
        )
    ).status_code == 422
    assert (await client.delete("/api/items/999999", headers=alice.headers)).status_code == 404
    await client.get(f"/api/items/{item['id']}", headers=alice.headers)
    await client.get("/api/stats", headers=alice.headers)
    assert (await listing(client, alice))["seq"] == seq0 + 5
    assert (
        await client.delete(f"/api/items/{item['id']}", headers=alice.headers)
    ).status_code == 204
    assert (await listing(client, alice))["seq"] == seq0 + 6
    # the seq is store-wide: a filtered page reports it too
    assert (await listing(client, alice, owner_id=bob.id))["seq"] == seq0 + 6


async def test_reads_see_writes_immediately(client: httpx.AsyncClient, alice: Account) -> None:
    """After an acknowledged update or delete, GET and the list (same query as before) show
    the new state at once: no stale cached page or item."""
    item = await create(client, alice, title="before")
    before_page = await listing(client, alice, q="before")
    assert [i["id"] for i in before_page["items"]] == [item["id"]]
    assert (await client.get(f"/api/items/{item['id']}", headers=alice.headers)).json() == item

    r = await client.patch(
        f"/api/items/{item['id']}", json={"title": "after"}, headers=alice.headers
    )
    assert r.status_code == 200
    assert (await listing(client, alice, q="before"))["items"] == []
    page = await listing(client, alice)
    assert page["items"][0]["title"] == "after" and page["items"][0]["version"] == 2
    got = (await client.get(f"/api/items/{item['id']}", headers=alice.headers)).json()
    assert got["title"] == "after" and got["version"] == 2

    assert (
        await client.delete(f"/api/items/{item['id']}", headers=alice.headers)
    ).status_code == 204
    assert (await listing(client, alice))["items"] == []
    assert (await client.get(f"/api/items/{item['id']}", headers=alice.headers)).status_code == 404


# -- bulk -------------------------------------------------------------------------------------


async def test_bulk_create(client: httpx.AsyncClient, alice: Account, wire: Wire) -> None:
    """POST /api/items/bulk answers 201 {items} in request order, each owned by the caller,
    with defaults applied, distinct ids, and each readable by id."""
    batch = [
        {"title": "one"},
        {"title": "two", "status": "completed", "priority": 40},
        {"title": "three", "description": "desc", "priority": 0},
    ]
    r = await wire.send(
        client,
        "POST",
        "/api/items/bulk",
        pb.BulkCreateRequest,
        {"items": batch},
        auth=alice.headers,
    )
    assert r.status_code == 201, r.content
    items = wire.decode(r, pb.ItemList)["items"]
    assert [i["title"] for i in items] == ["one", "two", "three"]
    assert [(i["status"], i["priority"]) for i in items] == [
        ("active", 0),
        ("completed", 40),
        ("active", 0),
    ]
    assert items[2]["description"] == "desc"
    assert all(i["owner_id"] == alice.id and i["version"] == 1 for i in items)
    assert len({i["id"] for i in items}) == 3
    for item in items:
        got = await client.get(f"/api/items/{item['id']}", headers=alice.headers)
        assert json_to_dict(got.json()) == item


async def test_bulk_size_limits(client: httpx.AsyncClient, alice: Account, wire: Wire) -> None:
    """A bulk of 1 and of 1000 items is accepted; 0 and 1001 items are a 4xx that creates
    nothing."""
    one = await wire.send(
        client,
        "POST",
        "/api/items/bulk",
        pb.BulkCreateRequest,
        {"items": [{"title": "solo"}]},
        auth=alice.headers,
    )
    assert one.status_code == 201 and len(wire.decode(one, pb.ItemList)["items"]) == 1
    thousand = await wire.send(
        client,
        "POST",
        "/api/items/bulk",
        pb.BulkCreateRequest,
        {"items": [{"title": f"t{n}"} for n in range(1000)]},
        auth=alice.headers,
    )
    assert thousand.status_code == 201
    assert len(wire.decode(thousand, pb.ItemList)["items"]) == 1000
    assert (await stats(client, alice))["total"] == 1001
    for size in (0, 1001):
        r = await wire.send(
            client,
            "POST",
            "/api/items/bulk",
            pb.BulkCreateRequest,
            {"items": [{"title": f"t{n}"} for n in range(size)]},
            auth=alice.headers,
        )
        assert 400 <= r.status_code < 500, (size, r.status_code)
        assert "items" in wire.error(r)
    assert (await stats(client, alice))["total"] == 1001


BAD_BULK_MEMBERS: list[tuple[dict[str, Any], str]] = [
    ({"title": "bad", "priority": 101}, "priority"),
    ({"title": "bad", "priority": -1}, "priority"),
    ({"title": ""}, "title"),
    ({"title": "t" * 201}, "title"),
    ({"title": "bad", "status": "done"}, "status"),
    ({"title": "bad", "description": "d" * 10_001}, "description"),
]


async def test_bulk_is_all_or_nothing(
    client: httpx.AsyncClient, alice: Account, wire: Wire
) -> None:
    """One invalid item anywhere in a bulk rejects the whole request with a 4xx naming the
    field, and nothing at all is created (total and seq unchanged)."""
    await create(client, alice, title="pre-existing")
    before = await listing(client, alice)
    for bad, field in BAD_BULK_MEMBERS:
        for position in (0, 2):
            items: list[dict[str, Any]] = [{"title": "ok 1"}, {"title": "ok 2"}]
            items.insert(position, bad)
            r = await wire.send(
                client,
                "POST",
                "/api/items/bulk",
                pb.BulkCreateRequest,
                {"items": items},
                auth=alice.headers,
            )
            assert 400 <= r.status_code < 500, (bad, r.status_code)
            assert field in wire.error(r), (bad, wire.error(r))
    after = await listing(client, alice)
    assert (after["total"], after["seq"]) == (before["total"], before["seq"])
    assert after["items"] == before["items"]
    assert (await stats(client, alice))["total"] == 1


# -- update -----------------------------------------------------------------------------------


UPDATE_STEPS: list[dict[str, Any]] = [
    {"title": "renamed"},
    {"description": "now described"},
    {"status": "completed"},
    {"priority": 55},
    {"priority": 0},  # back to the default: must be applied, not taken as "absent"
    {"description": ""},  # clearing a field is a real change too
    {"status": "active", "priority": 12},
    {"title": "all four", "description": "every field", "status": "completed", "priority": 100},
    {"title": "all four"},  # the same value again is still an update
]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_update_any_subset(
    client: httpx.AsyncClient, alice: Account, wire: Wire, method: str
) -> None:
    """PUT and PATCH apply exactly the given subset of {title, description, status, priority},
    leave the rest as they were, bump version by one each time and advance updated_at."""
    item = await create(client, alice, title="original", description="orig desc", priority=5)
    expected = json_to_dict(item)
    for step in UPDATE_STEPS:
        r = await wire.send(
            client, method, f"/api/items/{item['id']}", pb.ItemUpdate, step, auth=alice.headers
        )
        assert r.status_code == 200, (step, r.content)
        updated = wire.decode(r, pb.Item)
        expected.update(step)
        expected["version"] += 1
        assert updated["updated_at"] >= expected["updated_at"]
        expected["updated_at"] = updated["updated_at"]
        assert updated == expected, step
        got = await client.get(f"/api/items/{item['id']}", headers=alice.headers)
        assert json_to_dict(got.json()) == expected
    assert expected["version"] == 1 + len(UPDATE_STEPS)
    assert expected["created_at"] == json_to_dict(item)["created_at"]
    assert expected["updated_at"] > expected["created_at"]


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_update_rejects_empty_null_and_invalid(
    client: httpx.AsyncClient, alice: Account, method: str
) -> None:
    """An empty body `{}` (JSON or protobuf), a null field, a wrong type, an out-of-range value
    or an unknown field is a 4xx naming the field, and the item is left untouched."""
    item = await create(client, alice, title="keep me")
    url = f"/api/items/{item['id']}"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"title": None}, "title"),
        ({"description": None}, "description"),
        ({"status": None}, "status"),
        ({"priority": None}, "priority"),
        ({"title": "fine", "priority": None}, "priority"),
        ({"title": ""}, "title"),
        ({"title": "t" * 201}, "title"),
        ({"description": "d" * 10_001}, "description"),
        ({"status": "done"}, "status"),
        ({"priority": 101}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": "5"}, "priority"),
        ({"priority": True}, "priority"),
        ({"title": 5}, "title"),
        ({"owner_id": 999}, "owner_id"),
        ({"version": 7}, "version"),
    ]
    empty = await client.request(method, url, json={}, headers=alice.headers)
    assert 400 <= empty.status_code < 500
    assert error_message(empty)
    for media in (PROTOBUF, X_PROTOBUF):
        r = await client.request(
            method,
            url,
            content=b"",
            headers={"Content-Type": media, "Accept": media, **alice.headers},
        )
        assert 400 <= r.status_code < 500, media
        error_message(r, media)
    for body, field in cases:
        r = await client.request(method, url, json=body, headers=alice.headers)
        assert 400 <= r.status_code < 500, (body, r.status_code)
        assert field in error_message(r), (body, r.text)
    for body, field in cases[5:11]:  # the ones protobuf can express
        wire = Wire(PROTOBUF)
        r = await wire.send(client, method, url, pb.ItemUpdate, body, auth=alice.headers)
        assert 400 <= r.status_code < 500, (body, r.status_code)
        assert field in wire.error(r), body
    got = await client.get(url, headers=alice.headers)
    assert got.json() == item


async def test_only_owner_may_change(
    client: httpx.AsyncClient, alice: Account, bob: Account, wire: Wire
) -> None:
    """PUT, PATCH and DELETE of another user's item answer 403 and change nothing."""
    item = await create(client, alice, title="alice's own")
    for method, message_cls, body in (
        ("PUT", pb.ItemUpdate, {"title": "stolen"}),
        ("PATCH", pb.ItemUpdate, {"status": "completed"}),
        ("DELETE", None, None),
    ):
        r = await wire.send(
            client, method, f"/api/items/{item['id']}", message_cls, body, auth=bob.headers
        )
        assert r.status_code == 403, (method, r.status_code)
        wire.error(r)
    got = await client.get(f"/api/items/{item['id']}", headers=bob.headers)
    assert got.status_code == 200 and got.json() == item


# -- delete -----------------------------------------------------------------------------------


async def test_delete(client: httpx.AsyncClient, alice: Account, wire: Wire) -> None:
    """DELETE answers 204 with no body; the item is then 404 on GET, on a second DELETE and on
    update, and gone from the list."""
    keep = await create(client, alice, title="keep")
    gone = await create(client, alice, title="gone")
    r = await wire.send(client, "DELETE", f"/api/items/{gone['id']}", auth=alice.headers)
    assert r.status_code == 204
    assert r.content == b""
    for method, message_cls, body in (
        ("GET", None, None),
        ("DELETE", None, None),
        ("PATCH", pb.ItemUpdate, {"title": "zombie"}),
    ):
        again = await wire.send(
            client, method, f"/api/items/{gone['id']}", message_cls, body, auth=alice.headers
        )
        assert again.status_code == 404, method
        wire.error(again)
    page = await listing(client, alice)
    assert [i["id"] for i in page["items"]] == [keep["id"]] and page["total"] == 1


# -- stats ------------------------------------------------------------------------------------


async def test_stats(client: httpx.AsyncClient, alice: Account, bob: Account, wire: Wire) -> None:
    """GET /api/stats counts every item store-wide: total, active, completed and the mean
    priority, kept right through creates, bulk creates, updates and deletes."""

    async def current() -> dict[str, Any]:
        r = await wire.send(client, "GET", "/api/stats", auth=alice.headers)
        assert r.status_code == 200
        return wire.decode(r, pb.Stats)

    assert await current() == {"total": 0, "active": 0, "completed": 0, "avg_priority": 0.0}
    a = await create(client, alice, title="a", priority=10)
    await create(client, bob, title="b", priority=20, status="completed")
    c = await create(client, alice, title="c", priority=30)
    await bulk(client, bob, [{"title": "d", "priority": 45}, {"title": "e"}])
    # priorities 10, 20, 30, 45, 0; completed: b
    assert await current() == {"total": 5, "active": 4, "completed": 1, "avg_priority": 21.0}

    assert (
        await client.patch(
            f"/api/items/{a['id']}",
            json={"status": "completed", "priority": 40},
            headers=alice.headers,
        )
    ).status_code == 200
    assert (await client.delete(f"/api/items/{c['id']}", headers=alice.headers)).status_code == 204
    # priorities 40, 20, 45, 0; completed: a, b
    assert await current() == {"total": 4, "active": 2, "completed": 2, "avg_priority": 26.25}

    assert (
        await client.put(f"/api/items/{a['id']}", json={"priority": 1}, headers=alice.headers)
    ).status_code == 200
    now = await current()
    # priorities 1, 20, 45, 0
    assert (now["total"], now["active"], now["completed"]) == (4, 2, 2)
    assert now["avg_priority"] == pytest.approx(66 / 4, abs=1e-3)
    await create(client, alice, title="f", priority=1)
    assert (await current())["avg_priority"] == pytest.approx(67 / 5, abs=1e-3)
