"""Whatever arrives as a token (issue 6.1: a non-ASCII character made the signature check raise
and answer 500, or drop a WebSocket without a close frame), the answer is 401 in the
negotiated format (4401 on a WebSocket); and a token for a user the store never had, however
it was signed, writes nothing and reads nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from service.api import auth
from service.api.auth import MAX_TOKEN_CHARS, TokenSigner
from service.config import Settings
from service.pb import duckcast_pb2 as pb
from tests.api.conftest import Account
from tests.api.wire import JSON, PROTOBUF
from tests.realtime.conftest import TIMEOUT, Live, serve

FIXTURES_SHARED = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)
# Request paths that authenticate: a FastAPI route, the hot path, the SSE stream.
PATHS = ["/api/me", "/api/items", "/api/items/1", "/api/events"]


def mutated(token: str) -> st.SearchStrategy[str]:
    """A genuine token with one character replaced by any character (non-ASCII mostly)."""
    # The index is drawn independently of the token's length (which varies by user id), so
    # hypothesis sees the same choices for every example.
    # A replacement by the same character is the genuine token (accepted; on the SSE path a
    # stream that never ends): not a mutation.
    return st.builds(
        lambda i, c: token[: i % len(token)] + c + token[i % len(token) + 1 :],
        st.integers(0, 1000),
        st.characters(codec=None, exclude_characters="\r\n"),
    ).filter(lambda text: text != token)


def token_texts(token: str) -> st.SearchStrategy[str]:
    digits = st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=25)
    return st.one_of(
        st.text(max_size=MAX_TOKEN_CHARS + 20),
        mutated(token),
        st.builds(
            lambda u, e: f"v2.{u}.{e}.{token.split('.')[3]}.{token.split('.')[4]}", digits, digits
        ),
    )


def assert_refused(r: httpx.Response, media: str) -> None:
    assert r.status_code == 401, (r.status_code, r.content[:200])
    assert r.headers["content-type"] == media
    if media == JSON:
        assert isinstance(r.json()["detail"], str)
    else:
        assert pb.Error.FromString(r.content).code == 401


@given(data=st.data())
@FIXTURES_SHARED
async def test_any_text_as_a_token_answers_401(
    data: st.DataObject, client: httpx.AsyncClient, alice: Account, app: FastAPI
) -> None:
    """The Authorization header and the session cookie, as raw bytes (what a server hands
    the app, decoded as latin-1), and `?token=` on the streams (percent-decoded UTF-8)."""
    settings_: Settings = app.state.settings
    text = data.draw(token_texts(alice.token), label="token")
    raw = text.encode("utf-8", "surrogatepass")
    where = data.draw(st.sampled_from(["header", "cookie", "query"]), label="where")
    media = data.draw(st.sampled_from([JSON, PROTOBUF]), label="media")
    path = data.draw(st.sampled_from(PATHS), label="path")
    headers: list[tuple[bytes, bytes]] = [(b"accept", media.encode())]
    if where == "header":
        headers.append((b"authorization", b"Bearer " + raw.replace(b"\r", b"").replace(b"\n", b"")))
    elif where == "cookie":
        cookie = raw.replace(b"\r", b"").replace(b"\n", b"")
        headers.append((b"cookie", settings_.cookie_name.encode() + b"=" + cookie))
    else:
        # percent-encoded from the bytes: httpx cannot encode a lone surrogate in params
        path = "/api/events?token=" + quote(raw, safe="")
    # bounded: an accepted token on /api/events is a stream that never ends, and a hang inside
    # hypothesis outlives pytest-timeout's one alarm
    r = await asyncio.wait_for(client.get(path, headers=headers), TIMEOUT)
    assert_refused(r, media)


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    async with serve(Settings(data_dir=tmp_path / "data")) as server:
        yield server


@given(data=st.data())
@settings(FIXTURES_SHARED, max_examples=40)
async def test_any_text_as_a_stream_token_closes_the_websocket_with_4401(
    data: st.DataObject, live: Live
) -> None:
    """A WebSocket with any `?token=` text gets a close frame 4401 (not a dropped
    connection, not a 1011), on a real uvicorn."""
    alice = await live.user(f"u{time.monotonic_ns()}")
    text = data.draw(token_texts(alice.token), label="token")
    url = f"{live.ws_url}/ws/items?token={quote(text, safe='')}"
    async with connect(url, proxy=None, open_timeout=TIMEOUT) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None, "dropped without a close frame"
    assert closed.value.rcvd.code == 4401


def forge(signer: TokenSigner, user: str, token_id: str = "A" * 22) -> str:
    """A token with any text as its user id, signed with the deployment's own key: what a
    leaked key (or a bug) could produce; the id rules must hold even then."""
    payload = f"v2.{user}.{int(time.time()) + 3600}.{token_id}"
    return f"{payload}.{signer._sign(payload).decode()}"


@pytest.mark.parametrize("user", ["-5", "0", "999999", str(2**63 - 1), str(2**70), "٣", "1e3"])
async def test_a_token_for_a_user_that_does_not_exist_is_refused(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, user: str
) -> None:
    """Negative, zero, unknown and out-of-range ids, and ids in other digits: /api/me, a
    create and a delete all answer 401 (never 500), and nothing is written."""
    headers = [(b"authorization", f"Bearer {forge(app.state.signer, user)}".encode())]
    assert (await client.get("/api/me", headers=headers)).status_code == 401
    assert (
        await client.post("/api/items", json={"title": "x"}, headers=headers)
    ).status_code == 401
    bulk = {"items": [{"title": "x"}]}
    assert (await client.post("/api/items/bulk", json=bulk, headers=headers)).status_code == 401
    page = await client.get("/api/items", headers=alice.headers)
    assert page.json()["total"] == 0


def test_a_verified_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """The signer remembers tokens it verified (the HMAC is most of the cost) but checks their
    expiry on every use, and remembers a bounded number of them."""
    clock = [1_000_000.0]
    monkeypatch.setattr(auth.time, "time", lambda: clock[0])
    signer = TokenSigner(b"k" * 32, ttl_seconds=60)
    token = signer.issue(7).value
    assert signer.verify(token) is not None
    assert signer.verify(token) is not None  # remembered
    clock[0] += 61
    assert signer.verify(token) is None
    for user in range(1, auth.VERIFIED_MAX + 2):
        assert signer.verify(signer.issue(user).value) is not None
    assert len(signer._verified) <= auth.VERIFIED_MAX


async def test_the_bearer_header_comes_before_the_cookie(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    """Which text is the request's token: the bearer header when there is one (valid or not),
    else the session cookie; the cookie is not even read then (service.api.deps)."""
    cookie_name = Settings().cookie_name
    as_bob = {"Cookie": f"{cookie_name}={bob.token}"}
    r = await client.get("/api/me", headers={**alice.headers, **as_bob})
    assert r.status_code == 200 and r.json()["id"] == alice.id
    forged = {"Authorization": "Bearer v2.1.1.x.y", **as_bob}
    assert (await client.get("/api/me", headers=forged)).status_code == 401
    assert (await client.get("/api/me", headers=as_bob)).json()["id"] == bob.id
