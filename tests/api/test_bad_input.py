"""Bad input never gets a 5xx: malformed bodies, wrong types, out-of-range values, wrong media
types and oversize bodies all answer a 4xx in the negotiated error format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.pb import duckcast_pb2 as pb
from tests.api.conftest import PASSWORD, Account, MakeUser, SmallApp
from tests.api.wire import JSON, MEDIA_TYPES, PROTOBUF, X_PROTOBUF, Wire, error_message

# (method, path template, protobuf message of the body); {id} is an item alice owns
BODY_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("POST", "/api/register", pb.RegisterRequest),
    ("POST", "/api/login", pb.LoginRequest),
    ("POST", "/api/items", pb.ItemCreate),
    ("POST", "/api/items/bulk", pb.BulkCreateRequest),
    ("PUT", "/api/items/{id}", pb.ItemUpdate),
    ("PATCH", "/api/items/{id}", pb.ItemUpdate),
]


async def own_item(client: httpx.AsyncClient, who: Account) -> dict[str, Any]:
    r = await client.post("/api/items", json={"title": "target"}, headers=who.headers)
    assert r.status_code == 201
    item: dict[str, Any] = r.json()
    return item


async def test_malformed_json_is_400(client: httpx.AsyncClient, alice: Account) -> None:
    """Truncated, empty, non-UTF-8, lone-surrogate and absurdly nested JSON bodies answer 400
    with a JSON {"detail"} on every endpoint that takes a body; nothing is written."""
    item = await own_item(client, alice)
    bodies = [
        b'{"title": "x"',
        b"",
        b"not json",
        b'{"title": "\xff"}',
        b'{"title": "\\ud800"}',
        b"[" * 100_000,
        b'{"title": "x",}',
        b"\x00",
    ]
    for method, template, _ in BODY_ENDPOINTS:
        url = template.format(id=item["id"])
        for body in bodies:
            r = await client.request(
                method, url, content=body, headers={"Content-Type": JSON, **alice.headers}
            )
            assert r.status_code == 400, (method, url, body[:20], r.status_code)
            assert "json" in error_message(r).lower()
    got = await client.get(f"/api/items/{item['id']}", headers=alice.headers)
    assert got.json() == item
    assert (await client.get("/api/stats", headers=alice.headers)).json()["total"] == 1


async def test_json_that_is_not_an_object(client: httpx.AsyncClient, alice: Account) -> None:
    """Well-formed JSON of the wrong shape (array, string, number, null) is a 4xx, not a 500."""
    item = await own_item(client, alice)
    for method, template, _ in BODY_ENDPOINTS:
        url = template.format(id=item["id"])
        for body in (b"[]", b'"title"', b"42", b"null", b"true", b'{"items": {"title": "x"}}'):
            r = await client.request(
                method, url, content=body, headers={"Content-Type": JSON, **alice.headers}
            )
            assert 400 <= r.status_code < 500, (method, url, body, r.status_code)
            error_message(r)


async def test_undecodable_protobuf_is_400(
    client: httpx.AsyncClient, alice: Account, pb_wire: Wire
) -> None:
    """Bytes that do not decode as the endpoint's protobuf message (garbage, truncated, a
    string field holding invalid UTF-8) answer 400 with a protobuf Error whose code is 400."""
    item = await own_item(client, alice)
    bodies = [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x01\xff", b"\x0a\x02\xc3\x28", b"\x80"]
    for method, template, _ in BODY_ENDPOINTS:
        url = template.format(id=item["id"])
        for body in bodies:
            r = await client.request(
                method, url, content=body, headers={**pb_wire.headers(), **alice.headers}
            )
            assert r.status_code == 400, (method, url, body, r.status_code)
            assert "protobuf" in pb_wire.error(r).lower()
    assert (await client.get("/api/stats", headers=alice.headers)).json()["total"] == 1


WRONG_CREATE_BODIES: list[tuple[dict[str, Any], str]] = [
    ({}, "title"),
    ({"title": 5}, "title"),
    ({"title": None}, "title"),
    ({"title": ["a"]}, "title"),
    ({"title": ""}, "title"),
    ({"title": "t" * 201}, "title"),
    ({"title": "x", "priority": "5"}, "priority"),
    ({"title": "x", "priority": True}, "priority"),
    ({"title": "x", "priority": 5.5}, "priority"),
    ({"title": "x", "priority": None}, "priority"),
    ({"title": "x", "priority": -1}, "priority"),
    ({"title": "x", "priority": 101}, "priority"),
    ({"title": "x", "priority": 2**70}, "priority"),
    ({"title": "x", "priority": -(2**70)}, "priority"),
    ({"title": "x", "status": "done"}, "status"),
    ({"title": "x", "status": "ACTIVE"}, "status"),
    ({"title": "x", "status": 1}, "status"),
    ({"title": "x", "description": 5}, "description"),
    ({"title": "x", "description": None}, "description"),
    ({"title": "x", "description": "d" * 10_001}, "description"),
    ({"title": "x", "owner_id": 1}, "owner_id"),
    ({"title": "x", "id": 1}, "id"),
]


async def test_wrong_types_and_ranges_in_json(client: httpx.AsyncClient, alice: Account) -> None:
    """Wrong types (priority "5", title 5, status "done", priority true...), nulls and
    out-of-range numbers in a create (single or bulk) answer 422 with {"detail"} naming the
    field, and nothing is created."""
    for body, field in WRONG_CREATE_BODIES:
        r = await client.post(
            "/api/items", content=json.dumps(body), headers={"Content-Type": JSON, **alice.headers}
        )
        assert r.status_code == 422, (body, r.status_code)
        assert field in error_message(r), (body, r.text)
        r = await client.post("/api/items/bulk", json={"items": [body]}, headers=alice.headers)
        assert r.status_code == 422, (body, r.status_code)
        assert field in error_message(r), (body, r.text)
    assert (await client.get("/api/stats", headers=alice.headers)).json()["total"] == 0


async def test_out_of_range_in_protobuf(
    client: httpx.AsyncClient, alice: Account, pb_wire: Wire
) -> None:
    """Protobuf bodies obey the same rules as JSON: out-of-range values answer 422 with an
    Error naming the field, code 422."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "title"),
        ({"title": "x", "priority": -1}, "priority"),
        ({"title": "x", "priority": 101}, "priority"),
        ({"title": "x", "priority": 2**31 - 1}, "priority"),
        ({"title": "x", "priority": -(2**31)}, "priority"),
        ({"title": "x", "status": "done"}, "status"),
        ({"title": "x", "status": ""}, "status"),
        ({"title": "t" * 201}, "title"),
        ({"title": "x", "description": "d" * 10_001}, "description"),
    ]
    for body, field in cases:
        r = await pb_wire.send(
            client, "POST", "/api/items", pb.ItemCreate, body, auth=alice.headers
        )
        assert r.status_code == 422, (body, r.status_code)
        assert field in pb_wire.error(r), body
    assert (await client.get("/api/stats", headers=alice.headers)).json()["total"] == 0


async def test_description_length_boundary(
    client: httpx.AsyncClient, alice: Account, wire: Wire
) -> None:
    """A 10,000-character description is accepted on create and update; 10,001 is a 4xx
    naming description. The same for a 200 vs 201-character title."""
    r = await wire.send(
        client,
        "POST",
        "/api/items",
        pb.ItemCreate,
        {"title": "t" * 200, "description": "\u00e9" * 10_000},
        auth=alice.headers,
    )
    assert r.status_code == 201, r.content[:200]
    item = wire.decode(r, pb.Item)
    assert len(item["description"]) == 10_000 and len(item["title"]) == 200
    url = f"/api/items/{item['id']}"
    r = await wire.send(
        client, "PATCH", url, pb.ItemUpdate, {"description": "x" * 10_000}, auth=alice.headers
    )
    assert r.status_code == 200
    too_long = {"description": "d" * 10_001, "title": "t" * 201}
    for field, value in too_long.items():
        create_body = {"title": "x", field: value}
        r = await wire.send(
            client, "POST", "/api/items", pb.ItemCreate, create_body, auth=alice.headers
        )
        assert r.status_code == 422 and field in wire.error(r), field
        r = await wire.send(client, "PATCH", url, pb.ItemUpdate, {field: value}, auth=alice.headers)
        assert r.status_code == 422 and field in wire.error(r), field
    assert (await client.get(url, headers=alice.headers)).json()["version"] == 2


async def test_bad_ids_in_path(client: httpx.AsyncClient, alice: Account, wire: Wire) -> None:
    """Ids that are not positive 64-bit integers (2**70, 2**63, 0, -1, 1.5, abc) answer 422
    naming item_id on every item route; never a 500."""
    await own_item(client, alice)
    for bad in (str(2**70), str(2**63), "0", "-1", "1.5", "abc", "1e3"):
        for method, message_cls, body in (
            ("GET", None, None),
            ("DELETE", None, None),
            ("PUT", pb.ItemUpdate, {"title": "x"}),
            ("PATCH", pb.ItemUpdate, {"title": "x"}),
        ):
            r = await wire.send(
                client, method, f"/api/items/{bad}", message_cls, body, auth=alice.headers
            )
            assert r.status_code == 422, (method, bad, r.status_code)
            assert "item_id" in wire.error(r), (method, bad)


async def test_unsupported_media_type_is_415(
    client: httpx.AsyncClient, alice: Account, make_user: MakeUser
) -> None:
    """A body with Content-Type text/plain, form-urlencoded, XML, or no Content-Type at all is
    415 on every JSON/protobuf endpoint, in the negotiated format; JSON with a charset
    parameter is fine."""
    await make_user("mediauser")
    item = await own_item(client, alice)
    valid = {
        "/api/register": {"username": "newname", "password": PASSWORD},
        "/api/login": {"username": "mediauser", "password": PASSWORD},
        "/api/items": {"title": "x"},
        "/api/items/bulk": {"items": [{"title": "x"}]},
        "/api/items/{id}": {"title": "x"},
    }
    for method, template, _ in BODY_ENDPOINTS:
        url = template.format(id=item["id"])
        body = json.dumps(valid[template]).encode()
        for content_type in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/xml",
            "multipart/form-data; boundary=x",
            None,
        ):
            for accept in (JSON, PROTOBUF):
                headers = {"Accept": accept, **alice.headers}
                if content_type is not None:
                    headers["Content-Type"] = content_type
                r = await client.request(method, url, content=body, headers=headers)
                assert r.status_code == 415, (method, url, content_type, r.status_code)
                assert "Content-Type" in error_message(r, accept)
    r = await client.post(
        "/api/items",
        content=b'{"title": "charset"}',
        headers={"Content-Type": "application/json; charset=utf-8", **alice.headers},
    )
    assert r.status_code == 201
    assert (await client.get("/api/stats", headers=alice.headers)).json()["total"] == 2


async def test_errors_are_negotiated_everywhere(client: httpx.AsyncClient, alice: Account) -> None:
    """Framework-level errors (unknown route, wrong method) also answer in the negotiated
    format: {"detail"} in JSON, Error {code, message} in protobuf with the media type echoed."""
    for media in MEDIA_TYPES:
        headers = {"Accept": media, **alice.headers}
        r = await client.get("/api/no-such-thing", headers=headers)
        assert r.status_code == 404
        error_message(r, media)
        r = await client.delete("/api/items", headers=headers)
        assert r.status_code == 405
        error_message(r, media)


# -- body size limit ---------------------------------------------------------------------------


async def test_oversize_body_is_413(small: SmallApp, make_user: MakeUser) -> None:
    """A body over max_body_bytes answers 413 -- declared by Content-Length or streamed
    without one -- in JSON or protobuf, and creates nothing; a body under the limit works."""
    client = small.client
    user = await small.app.state.store.create_user("big", "not-a-real-hash")
    headers = {"Authorization": f"Bearer {small.app.state.signer.issue(user.id).value}"}
    limit = small.settings.max_body_bytes
    assert limit == 2048

    ok = await client.post(
        "/api/items", json={"title": "x", "description": "d" * 1900}, headers=headers
    )
    assert ok.status_code == 201

    oversize = json.dumps({"title": "x", "description": "d" * 3000}).encode()
    pb_oversize = Wire(PROTOBUF).body(pb.ItemCreate, {"title": "x", "description": "d" * 3000})
    for media, body in ((JSON, oversize), (PROTOBUF, pb_oversize), (X_PROTOBUF, pb_oversize)):
        h = {"Content-Type": media, "Accept": media, **headers}
        r = await client.post("/api/items", content=body, headers=h)
        assert r.status_code == 413, (media, r.status_code)
        error_message(r, media)

        async def chunks(data: bytes = body) -> AsyncIterator[bytes]:
            for start in range(0, len(data), 500):
                yield data[start : start + 500]

        r = await client.post("/api/items", content=chunks(), headers=h)
        assert "content-length" not in r.request.headers
        assert r.status_code == 413, (media, "streamed", r.status_code)
        error_message(r, media)
    r = await client.post(
        "/api/register",
        content=b'{"username": "' + b"u" * 4000 + b'"}',
        headers={"Content-Type": JSON},
    )
    assert r.status_code == 413
    assert (await client.get("/api/stats", headers=headers)).json()["total"] == 1


@pytest.mark.parametrize("declared", ["abc", "-1", "1.5"])
async def test_invalid_content_length_is_400(small: SmallApp, declared: str) -> None:
    """A Content-Length that is not a non-negative integer is a 400, not a 500."""
    status, body = await _raw_post(small, "/api/login", declared, b"{}")
    assert status == 400, status
    assert json.loads(body) == {"detail": "invalid Content-Length"}


async def _raw_post(
    small: SmallApp, path: str, content_length: str, body: bytes
) -> tuple[int, bytes]:
    """POST through the ASGI interface with a Content-Length header exactly as given (httpx
    would compute its own)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("test", 80),
        "client": ("127.0.0.1", 5000),
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"content-length", content_length.encode()),
        ],
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0
    out = bytearray()

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            out.extend(message.get("body", b""))

    await small.app(scope, receive, send)
    return status, bytes(out)
