"""The safe-retry contract over HTTP, in every format: Idempotency-Key on creates, ETag on
item answers and If-Match on changes (412 when the item moved on)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.pb import duckcast_pb2 as pb
from tests.api.conftest import Account
from tests.api.wire import JSON, PROTOBUF, Wire, error_message


async def test_a_retried_create_answers_the_first_answer_without_a_second_item(
    client: httpx.AsyncClient, alice: Account, wire: Wire
) -> None:
    """Same key, same body: the same status and body (byte for byte), one item. The retry
    may even ask for the other format: the first result is rendered as it asks."""
    headers = {**wire.headers(alice.headers), "Idempotency-Key": "order-42 / try"}
    body = wire.body(pb.ItemCreate, {"title": "once", "priority": 3})
    first = await client.post("/api/items", content=body, headers=headers)
    assert first.status_code == 201, first.content
    again = await client.post("/api/items", content=body, headers=headers)
    assert (again.status_code, again.content) == (201, first.content)
    assert again.headers["etag"] == first.headers["etag"] == '"1"'
    other = PROTOBUF if wire.media == JSON else JSON
    as_other = await client.post("/api/items", content=body, headers={**headers, "Accept": other})
    assert as_other.status_code == 201
    created = wire.decode(first, pb.Item)
    replayed = Wire(other).decode(as_other, pb.Item)
    assert replayed == created
    page = await client.get("/api/items", headers=alice.headers)
    assert page.json()["total"] == 1


async def test_a_key_is_per_user_and_a_reused_key_with_another_body_is_422(
    client: httpx.AsyncClient, alice: Account, bob: Account, wire: Wire
) -> None:
    key = {"Idempotency-Key": "k1"}
    body = wire.body(pb.ItemCreate, {"title": "a"})
    r = await client.post(
        "/api/items", content=body, headers={**wire.headers(alice.headers), **key}
    )
    assert r.status_code == 201
    r = await client.post("/api/items", content=body, headers={**wire.headers(bob.headers), **key})
    assert r.status_code == 201 and wire.decode(r, pb.Item)["owner_id"] == bob.id
    other = wire.body(pb.ItemCreate, {"title": "b"})
    r = await client.post(
        "/api/items", content=other, headers={**wire.headers(alice.headers), **key}
    )
    assert r.status_code == 422
    assert "Idempotency-Key" in wire.error(r)
    # the same key on the other create route is another request, not a replay
    bulk = wire.body(pb.BulkCreateRequest, {"items": [{"title": "a"}]})
    r = await client.post(
        "/api/items/bulk", content=bulk, headers={**wire.headers(alice.headers), **key}
    )
    assert r.status_code == 422


async def test_a_retried_bulk_create_answers_the_first_answer(
    client: httpx.AsyncClient, alice: Account, wire: Wire
) -> None:
    headers = {**wire.headers(alice.headers), "Idempotency-Key": "bulk-1"}
    body = wire.body(pb.BulkCreateRequest, {"items": [{"title": "a"}, {"title": "b"}]})
    tries = await asyncio.gather(
        *(client.post("/api/items/bulk", content=body, headers=headers) for _ in range(3))
    )
    assert {(r.status_code, r.content) for r in tries} == {(201, tries[0].content)}
    page = await client.get("/api/items", headers=alice.headers)
    assert page.json()["total"] == 2


@pytest.mark.parametrize(
    "key",
    ["", "x" * 201, "caf\u00e9", "tab\there", "line\x7f"],
    ids=["empty", "long", "latin1", "tab", "del"],
)
async def test_an_invalid_idempotency_key_is_422(
    client: httpx.AsyncClient, alice: Account, key: str
) -> None:
    r = await client.post(
        "/api/items",
        json={"title": "x"},
        headers={**alice.headers, "Idempotency-Key": key.encode("utf-8")},
    )
    assert r.status_code == 422, r.text
    assert "Idempotency-Key" in error_message(r)
    assert (await client.get("/api/items", headers=alice.headers)).json()["total"] == 0


async def test_item_answers_carry_the_version_as_etag_and_if_match_guards_changes(
    client: httpx.AsyncClient, alice: Account, wire: Wire
) -> None:
    """GET, POST, PUT and PATCH answers carry ETag "<version>"; PUT/PATCH/DELETE with an
    If-Match naming another version answer 412 in the negotiated format and change nothing;
    with the current one (or *) they apply."""
    r = await wire.send(client, "POST", "/api/items", pb.ItemCreate, {"title": "v1"}, alice.headers)
    item = wire.decode(r, pb.Item)
    url = f"/api/items/{item['id']}"
    assert r.headers["etag"] == '"1"'
    r = await wire.send(client, "GET", url, auth=alice.headers)
    assert r.headers["etag"] == '"1"'

    stale = {**alice.headers, "If-Match": '"1"'}
    r = await wire.send(client, "PATCH", url, pb.ItemUpdate, {"title": "v2"}, stale)
    assert r.status_code == 200 and r.headers["etag"] == '"2"'
    for method, msg, data in (
        ("PATCH", pb.ItemUpdate, {"title": "lost"}),
        ("PUT", pb.ItemUpdate, {"title": "lost"}),
        ("DELETE", None, None),
    ):
        r = await wire.send(client, method, url, msg, data, stale)
        assert r.status_code == 412, (method, r.content)
        assert '"2"' in wire.error(r)
    r = await wire.send(client, "GET", url, auth=alice.headers)
    assert wire.decode(r, pb.Item)["title"] == "v2"

    for if_match in ('W/"2"', '"02"', '"abc"'):  # weak or foreign tags never match
        r = await wire.send(
            client,
            "PUT",
            url,
            pb.ItemUpdate,
            {"title": "x"},
            {**alice.headers, "If-Match": if_match},
        )
        assert r.status_code == 412, if_match
    r = await wire.send(
        client,
        "PUT",
        url,
        pb.ItemUpdate,
        {"title": "v3"},
        {**alice.headers, "If-Match": '"1", "2"'},
    )
    assert r.status_code == 200 and r.headers["etag"] == '"3"'
    r = await wire.send(
        client, "PATCH", url, pb.ItemUpdate, {"priority": 5}, {**alice.headers, "If-Match": "*"}
    )
    assert r.status_code == 200 and r.headers["etag"] == '"4"'
    r = await wire.send(client, "DELETE", url, auth={**alice.headers, "If-Match": '"4"'})
    assert r.status_code == 204


@pytest.mark.parametrize(
    ("if_match", "status"),
    [("2", 422), ('"2', 422), ("", 422), ('"\u0662"', 412), ('"1" "2"', 422)],
    ids=["bare", "open", "empty", "arabic-digit", "no-comma"],
)
async def test_a_malformed_if_match_is_422_and_a_foreign_tag_412(
    client: httpx.AsyncClient, alice: Account, if_match: str, status: int
) -> None:
    """An If-Match that is not entity tags is a bad request (422, naming the header); a
    well-formed tag that is not a version number (an Arabic-Indic digit) matches nothing."""
    r = await client.post("/api/items", json={"title": "a"}, headers=alice.headers)
    url = f"/api/items/{r.json()['id']}"
    headers = {**alice.headers, "If-Match": if_match.encode("utf-8")}
    r = await client.patch(url, json={"title": "b"}, headers=headers)
    assert r.status_code == status, r.text
    assert "If-Match" in error_message(r)
    assert (await client.get(url, headers=alice.headers)).json()["version"] == 1


async def test_concurrent_changes_from_the_same_version_apply_once(
    client: httpx.AsyncClient, alice: Account
) -> None:
    """Ten clients read version 1 and PATCH with If-Match "1" at once: one wins, nine get
    412; nothing is overwritten silently."""
    r = await client.post("/api/items", json={"title": "v1"}, headers=alice.headers)
    url = f"/api/items/{r.json()['id']}"
    tries = await asyncio.gather(
        *(
            client.patch(url, json={"title": f"t{n}"}, headers={**alice.headers, "If-Match": '"1"'})
            for n in range(10)
        )
    )
    assert sorted(r.status_code for r in tries) == [200] + [412] * 9
    assert (await client.get(url, headers=alice.headers)).json()["version"] == 2


async def test_openapi_documents_the_safe_retry_contract(client: httpx.AsyncClient) -> None:
    """Idempotency-Key on both creates, ETag on item answers, If-Match and 412 on changes,
    429 on login: the contract additions are in /openapi.json, not only in the README."""
    paths = (await client.get("/openapi.json")).json()["paths"]

    def header_params(op: dict) -> set[str]:
        return {p["name"] for p in op.get("parameters", []) if p["in"] == "header"}

    for path in ("/api/items", "/api/items/bulk"):
        assert "Idempotency-Key" in header_params(paths[path]["post"])
    assert "ETag" in paths["/api/items"]["post"]["responses"]["201"]["headers"]
    item = paths["/api/items/{item_id}"]
    assert "ETag" in item["get"]["responses"]["200"]["headers"]
    for method in ("put", "patch", "delete"):
        assert "If-Match" in header_params(item[method])
        assert "412" in item[method]["responses"]
    assert "ETag" in item["put"]["responses"]["200"]["headers"]
    assert "429" in paths["/api/login"]["post"]["responses"]
    assert item["get"]["parameters"][0]["schema"]["type"] == "integer"
