"""Users and sessions: register, login, logout, /api/me, and the 401 on every protected call."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie

import httpx
import pytest
from fastapi import FastAPI

from service.api.auth import TokenSigner
from service.config import Settings
from service.errors import NotFound
from service.keys import derive
from service.pb import duckcast_pb2 as pb
from tests.api.conftest import PASSWORD, Account, MakeUser
from tests.api.wire import JSON, PROTOBUF, X_PROTOBUF, Wire, error_message

NOW_SLACK = timedelta(minutes=5)


def assert_recent(ts: datetime) -> None:
    now = datetime.now(UTC)
    assert now - NOW_SLACK <= ts <= now + NOW_SLACK, ts


def session_cookie(r: httpx.Response, name: str) -> SimpleCookie:
    headers = [h for h in r.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    assert len(headers) == 1, r.headers.get_list("set-cookie")
    cookie: SimpleCookie = SimpleCookie()
    cookie.load(headers[0])
    return cookie


async def test_register_returns_user(client: httpx.AsyncClient, app: FastAPI, wire: Wire) -> None:
    """POST /api/register answers 201 with User {id, username, created_at} in the negotiated
    format, and the password is stored only as an argon2 hash."""
    r = await wire.send(
        client,
        "POST",
        "/api/register",
        pb.RegisterRequest,
        {"username": "New_user.1-x", "password": PASSWORD},
    )
    assert r.status_code == 201, r.content
    user = wire.decode(r, pb.User)
    assert set(user) == {"id", "username", "created_at"}
    assert isinstance(user["id"], int) and user["id"] >= 1
    assert user["username"] == "New_user.1-x"
    assert_recent(user["created_at"])
    record = await app.state.store.get_user_by_name("New_user.1-x")
    assert record.password_hash.startswith("$argon2"), record.password_hash[:10]
    assert PASSWORD not in record.password_hash


async def test_register_boundaries_accepted(client: httpx.AsyncClient) -> None:
    """The shortest and longest valid username (3, 32) and password (8, 128) register."""
    for username, password in (("abc", "p" * 8), ("Z" * 32, "q" * 128)):
        r = await client.post("/api/register", json={"username": username, "password": password})
        assert r.status_code == 201, (username, r.text)
        assert r.json()["username"] == username


async def test_register_taken_is_409(
    client: httpx.AsyncClient, make_user: MakeUser, wire: Wire
) -> None:
    """Registering a name that exists answers 409 in the negotiated error format."""
    await make_user("taken")
    r = await wire.send(
        client,
        "POST",
        "/api/register",
        pb.RegisterRequest,
        {"username": "taken", "password": PASSWORD},
    )
    assert r.status_code == 409
    assert "username" in wire.error(r).lower()


INVALID_CREDENTIALS = [
    ({"username": "ab", "password": PASSWORD}, "username"),
    ({"username": "a" * 33, "password": PASSWORD}, "username"),
    ({"username": "has space", "password": PASSWORD}, "username"),
    ({"username": "sla/sh", "password": PASSWORD}, "username"),
    ({"username": "ünïcode", "password": PASSWORD}, "username"),
    ({"username": "semi;colon", "password": PASSWORD}, "username"),
    ({"username": "valid_name", "password": "x" * 7}, "password"),
    ({"username": "valid_name", "password": "x" * 129}, "password"),
    ({"username": "valid_name"}, "password"),
    ({"password": PASSWORD}, "username"),
]


async def test_register_rejects_invalid(
    client: httpx.AsyncClient, app: FastAPI, wire: Wire
) -> None:
    """Usernames outside 3-32 of [A-Za-z0-9_.-] and passwords outside 8-128 characters get a
    4xx naming the field, and no user is created."""
    for body, field in INVALID_CREDENTIALS:
        r = await wire.send(client, "POST", "/api/register", pb.RegisterRequest, body)
        assert 400 <= r.status_code < 500, (body, r.status_code)
        assert field in wire.error(r), (body, wire.error(r))
        if "username" in body:
            with pytest.raises(NotFound):
                await app.state.store.get_user_by_name(body["username"])


async def test_register_rejects_wrong_json_types(client: httpx.AsyncClient) -> None:
    """Non-string credentials and unknown fields are a 4xx naming the field, not a 500."""
    cases = [
        ({"username": 12345, "password": PASSWORD}, "username"),
        ({"username": "valid_name", "password": 12345678}, "password"),
        ({"username": None, "password": PASSWORD}, "username"),
        ({"username": "valid_name", "password": PASSWORD, "admin": True}, "admin"),
    ]
    for body, field in cases:
        r = await client.post("/api/register", json=body)
        assert r.status_code == 422, (body, r.status_code)
        assert field in error_message(r), (body, r.text)


async def test_login_returns_token_and_cookie(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings, wire: Wire
) -> None:
    """POST /api/login answers 200 {token, token_type "bearer", expires_at, user} and sets an
    HttpOnly session cookie holding the same token; the token authenticates /api/me."""
    account = await make_user("loginuser")
    r = await wire.send(
        client,
        "POST",
        "/api/login",
        pb.LoginRequest,
        {"username": "loginuser", "password": PASSWORD},
    )
    assert r.status_code == 200, r.content
    body = wire.decode(r, pb.LoginResponse)
    assert set(body) == {"token", "token_type", "expires_at", "user"}
    assert body["token_type"] == "bearer"
    assert body["user"]["id"] == account.id and body["user"]["username"] == "loginuser"
    expected_expiry = datetime.now(UTC) + timedelta(seconds=settings.token_ttl_seconds)
    assert abs(body["expires_at"] - expected_expiry) < timedelta(minutes=1)

    cookie = session_cookie(r, settings.cookie_name)
    morsel = cookie[settings.cookie_name]
    assert morsel.value == body["token"]
    assert morsel["httponly"] is True
    assert morsel["path"] == "/"
    assert morsel["samesite"].lower() == "lax"
    assert int(morsel["max-age"]) == settings.token_ttl_seconds

    client.cookies.clear()
    me = await client.get("/api/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.status_code == 200 and me.json()["id"] == account.id


@pytest.mark.parametrize("wire", [Wire(JSON), Wire(PROTOBUF)], ids=["json", "protobuf"])
async def test_login_failures_share_one_message(
    client: httpx.AsyncClient, make_user: MakeUser, wire: Wire
) -> None:
    """Unknown user and wrong password both answer 401 with the very same message (no user
    enumeration), and neither sets a session cookie."""
    await make_user("realuser")
    unknown = await wire.send(
        client,
        "POST",
        "/api/login",
        pb.LoginRequest,
        {"username": "nosuchuser", "password": PASSWORD},
    )
    wrong = await wire.send(
        client,
        "POST",
        "/api/login",
        pb.LoginRequest,
        {"username": "realuser", "password": "wrong password"},
    )
    assert unknown.status_code == wrong.status_code == 401
    assert wire.error(unknown) == wire.error(wrong)
    assert not unknown.headers.get_list("set-cookie")
    assert not wrong.headers.get_list("set-cookie")
    assert not client.cookies


async def test_logout_clears_cookie(
    client: httpx.AsyncClient, make_user: MakeUser, settings: Settings
) -> None:
    """With only the login cookie a client is signed in; POST /api/logout answers 204 and
    expires that cookie, after which the same client gets 401."""
    await make_user("cookieuser")
    r = await client.post("/api/login", json={"username": "cookieuser", "password": PASSWORD})
    assert r.status_code == 200
    assert client.cookies.get(settings.cookie_name) == r.json()["token"]
    assert (await client.get("/api/me")).status_code == 200  # the cookie alone

    out = await client.post("/api/logout")
    assert out.status_code == 204
    assert out.content == b""
    morsel = session_cookie(out, settings.cookie_name)[settings.cookie_name]
    assert morsel.value in ("", '""')
    assert morsel["max-age"] == "0" or morsel["expires"]
    assert settings.cookie_name not in client.cookies
    assert (await client.get("/api/me")).status_code == 401


async def test_logout_revokes_the_bearer_token(
    client: httpx.AsyncClient, make_user: MakeUser
) -> None:
    """After logout the token itself is dead, not only the cookie: a copy of it (a bearer
    header, another tab) gets 401 from then on."""
    await make_user("revoked")
    r = await client.post("/api/login", json={"username": "revoked", "password": PASSWORD})
    bearer = {"Authorization": f"Bearer {r.json()['token']}"}
    client.cookies.clear()
    assert (await client.get("/api/me", headers=bearer)).status_code == 200
    assert (await client.post("/api/logout", headers=bearer)).status_code == 204
    assert (await client.get("/api/me", headers=bearer)).status_code == 401
    assert (await client.get("/api/items", headers=bearer)).status_code == 401


async def test_logout_always_answers_204_and_clears_the_cookie(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, settings: Settings
) -> None:
    """API.md: logout answers 204 and clears the cookie always: without credentials, and with
    an expired, forged or garbage cookie (a client must always be able to sign out)."""
    ttl = settings.token_ttl_seconds
    expired = app.state.signer.issue(alice.id, now=time.time() - 2 * ttl).value
    forged = "v2.1.1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    for cookie in (None, "garbage", forged, expired):
        headers = {"Cookie": f"{settings.cookie_name}={cookie}"} if cookie else {}
        r = await client.post("/api/logout", headers=headers)
        assert r.status_code == 204, (cookie, r.status_code)
        morsel = session_cookie(r, settings.cookie_name)[settings.cookie_name]
        assert morsel.value in ("", '""') and morsel["max-age"] == "0", cookie


async def test_me_with_bearer(client: httpx.AsyncClient, alice: Account, wire: Wire) -> None:
    """GET /api/me with a bearer token answers 200 with that token's User."""
    r = await wire.send(client, "GET", "/api/me", auth=alice.headers)
    assert r.status_code == 200
    me = wire.decode(r, pb.User)
    assert me["id"] == alice.id and me["username"] == "alice"
    assert_recent(me["created_at"])


async def test_me_with_cookie_alone(
    client: httpx.AsyncClient, alice: Account, settings: Settings
) -> None:
    """The session cookie by itself (no Authorization header) authenticates."""
    r = await client.get("/api/me", headers={"Cookie": f"{settings.cookie_name}={alice.token}"})
    assert r.status_code == 200
    assert r.json()["id"] == alice.id


async def test_me_rejects_bad_credentials(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, bob: Account, settings: Settings
) -> None:
    """No credentials, a garbage, forged, tampered, foreign-secret or expired token: 401 with
    WWW-Authenticate, in JSON and in protobuf."""
    _, uid, exp, tid, sig = alice.token.split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    ttl = settings.token_ttl_seconds
    own_key = app.state.keys.token
    expired = TokenSigner(own_key, ttl).issue(alice.id, now=time.time() - 2 * ttl)
    foreign = TokenSigner(derive(b"another-secret-entirely", "token"), ttl).issue(alice.id)
    bad_tokens = [
        "garbage",
        f"v2.1.9999999999.{tid}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  # forged
        f"v2.{bob.id}.{exp}.{tid}.{sig}",  # another user's id under alice's signature
        f"v2.{uid}.{int(exp) + 1000}.{tid}.{sig}",  # extended expiry
        f"v2.{uid}.{exp}.{tid}.{flipped}",  # signature altered
        f"v2.{uid}.{exp}.{tid[::-1]}.{sig}",  # another token id
        f"v1.{uid}.{exp}.{sig}",  # the old format
        f"{alice.token}.extra",
        foreign.value,
        expired.value,
    ]
    header_sets: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {alice.token}"},
    ]
    header_sets += [{"Authorization": f"Bearer {t}"} for t in bad_tokens]
    header_sets += [{"Cookie": f"{settings.cookie_name}={t}"} for t in bad_tokens]
    for headers in header_sets:
        for media in (JSON, PROTOBUF, X_PROTOBUF):
            r = await client.get("/api/me", headers={**headers, "Accept": media})
            assert r.status_code == 401, (headers, r.status_code)
            assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
            error_message(r, media)
    # the genuine token still works: the rejections above are about the token, not the user
    assert (await client.get("/api/me", headers=alice.headers)).status_code == 200


PROTECTED = [
    ("GET", "/api/me", None),
    ("GET", "/api/items", None),
    ("POST", "/api/items", {"title": "t"}),
    ("POST", "/api/items/bulk", {"items": [{"title": "t"}]}),
    ("GET", "/api/items/1", None),
    ("PUT", "/api/items/1", {"title": "t"}),
    ("PATCH", "/api/items/1", {"title": "t"}),
    ("DELETE", "/api/items/1", None),
    ("GET", "/api/stats", None),
]


async def test_protected_endpoints_need_credentials(
    client: httpx.AsyncClient, alice: Account
) -> None:
    """Every items, stats, me and upload call answers 401 without credentials (with a valid
    body, so nothing but the missing session can be the reason), in JSON and protobuf; and
    nothing was written."""
    created = await client.post("/api/items", json={"title": "keep"}, headers=alice.headers)
    assert created.status_code == 201
    for media in (JSON, PROTOBUF):
        for method, path, body in PROTECTED:
            r = await client.request(method, path, json=body, headers={"Accept": media})
            assert r.status_code == 401, (method, path, r.status_code)
            error_message(r, media)
        r = await client.post(
            "/api/upload", files={"file": ("a.txt", b"hi", "text/plain")}, headers={"Accept": media}
        )
        assert r.status_code == 401, r.status_code
        error_message(r, media)
    after = await client.get("/api/items/1", headers=alice.headers)
    assert after.json() == created.json()
    assert (await client.get("/api/stats", headers=alice.headers)).json()["total"] == 1
