"""A stream ends when the session it was opened with ends (README, Change streams): once its
token expires or is revoked (a logout, on any worker), an SSE stream sends `event: expired` and
ends, and a WebSocket closes 4401, within the ring's sweep (0.5 s). Otherwise a signed-out
user's open stream would go on delivering every change for as long as it stays connected.

Both ways a stream can be held are run: detached (uvicorn's defaults) and with a task of its
own (h11, wsproto)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from service.client import AsyncClient, SessionExpired
from service.config import Settings
from tests.realtime.conftest import (
    TIMEOUT,
    Account,
    Live,
    open_sse,
    recv,
    serve,
    settled,
    subscribed,
    until,
    ws_connect,
)
from tests.realtime.test_detach import closes

SERVERS = {"detached": {}, "a-task-each": {"http": "h11", "ws": "wsproto"}}


def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "d", environment="development")


async def logout(live: Live, who: Account) -> None:
    async with live.http() as http:
        assert (await http.post("/api/logout", headers=who.headers)).status_code == 204


def expiring(live: Live, who: Account, seconds: int) -> Account:
    """`who` with a token of theirs that expires `seconds` from now."""
    ttl = live.app.state.signer.ttl
    token = live.app.state.signer.issue(who.id, now=time.time() - ttl + seconds)
    return Account(who.id, who.username, token.value)


async def sse_ends_expired(live: Live, who: Account, end: Any, streams: int = 1) -> None:
    async with open_sse(live, headers=who.headers) as sse:
        await sse.expect("connected")
        await subscribed(live, streams)
        await end()
        async with asyncio.timeout(TIMEOUT):
            assert (await sse.expect("expired")).data == "{}"
            assert await sse.next() is None  # the body ends


async def ws_closes_4401(live: Live, who: Account, end: Any, streams: int = 1) -> None:
    async with ws_connect(live, who) as ws:
        await subscribed(live, streams)
        await end()
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_stream_ends_when_its_session_is_revoked(
    tmp_path: Path, server: str, transport: str
) -> None:
    """Logout revokes the token: the stream opened with it ends, counted `expired`; a stream
    of the same user opened with another token goes on."""
    async with serve(settings(tmp_path), **SERVERS[server]) as live:
        alice = await live.user("alice")
        other = Account(alice.id, alice.username, live.app.state.signer.issue(alice.id).value)
        await settled(live)
        before = closes(transport, "expired")
        async with ws_connect(live, other) as kept:
            await subscribed(live, 1)
            if transport == "sse":
                await sse_ends_expired(live, alice, lambda: logout(live, alice), 2)
            else:
                await ws_closes_4401(live, alice, lambda: logout(live, alice), 2)
            await until(lambda: len(live.ring) == 1, what="the revoked stream left the ring")
            assert closes(transport, "expired") == before + 1
            await kept.ping()  # still open


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_a_stream_ends_when_its_token_expires(
    tmp_path: Path, server: str, transport: str
) -> None:
    """A token that expires while its stream is open ends the stream at its expiry (checked
    by the sweep, whatever the traffic)."""
    async with serve(settings(tmp_path), **SERVERS[server]) as live:
        alice = expiring(live, await live.user("alice"), 2)
        await settled(live)
        before = closes(transport, "expired")

        async def expiry() -> None:
            pass  # nothing to do: the token's own time runs out

        if transport == "sse":
            await sse_ends_expired(live, alice, expiry)
        else:
            await ws_closes_4401(live, alice, expiry)
        await until(lambda: len(live.ring) == 0, what="the expired stream left the ring")
        assert closes(transport, "expired") == before + 1


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_the_client_subscription_ends_with_session_expired_after_logout(
    tmp_path: Path, transport: str
) -> None:
    """service.client's promise (README, Clients): `subscribe()` ends with SessionExpired when
    the token is revoked, rather than reconnecting."""
    async with serve(settings(tmp_path)) as live:
        alice = await live.user("alice")
        await settled(live)
        async with AsyncClient(live.url, token=alice.token) as api:

            async def first_error() -> None:
                async for _ in api.subscribe(transport):  # type: ignore[arg-type]
                    pass

            task = asyncio.create_task(first_error())
            await subscribed(live, 1)
            await logout(live, alice)
            with pytest.raises(SessionExpired):
                async with asyncio.timeout(TIMEOUT):
                    await task
