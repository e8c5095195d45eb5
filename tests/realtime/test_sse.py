"""SSE `GET /api/events` through a real uvicorn server (embedded store, memory backplane)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from service.config import Settings
from tests.realtime.conftest import (
    TIMEOUT,
    Live,
    create_item,
    delete_item,
    open_sse,
    serve,
    settled,
    until,
    update_item,
    writing,
)
from tests.sse import EventStream, seq


async def test_connected_then_one_event_per_change(live: Live) -> None:
    """A new stream starts with a `retry:` hint and `event: connected` carrying the current
    seq; then each change is `id: <seq>`, `event: item_created|item_updated|item_deleted` and
    `data:` the item exactly as the REST API returns it (for a delete, `{"id": n}`)."""
    alice = await live.user("alice")
    async with live.http() as http:
        await create_item(http, alice, title="before")
        current = await settled(live)
        async with open_sse(live, headers=alice.headers) as sse:
            hello = await sse.expect("connected")
            assert hello.json() == {"seq": current}
            assert hello.retry is not None and hello.retry > 0

            created = await create_item(
                http, alice, title="new", priority=3, description="d", status="active"
            )
            updated = await update_item(http, alice, created["id"], status="completed")
            await delete_item(http, alice, created["id"])

            got = await sse.changes_until(current + 3)
    assert [(e.id, e.event) for e in got] == [
        (str(current + 1), "item_created"),
        (str(current + 2), "item_updated"),
        (str(current + 3), "item_deleted"),
    ]
    assert got[0].json() == created
    assert got[1].json() == updated
    assert got[2].json() == {"id": created["id"]}


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_replays_everything_after_the_id_without_gap_or_duplicate(
    live: Live, how: str
) -> None:
    """Reconnecting with `Last-Event-ID: n` (or `?last_event_id=n`) yields every event after n,
    in seq order, then the live ones, with neither a gap nor a duplicate at the seam between
    replay and live, while writes keep committing during the connect."""
    alice = await live.user("alice")
    async with writing(live, alice) as committed:
        for offset in (0, 1, 2, 7, 40, 1, 0, 3):
            await until(lambda: len(committed) > 45, what="enough history")
            newest = committed[-1]
            since = max(newest - offset, 0)
            kwargs: dict[str, Any] = (
                {"headers": {**alice.headers, "Last-Event-ID": str(since)}}
                if how == "header"
                else {"headers": alice.headers, "params": {"last_event_id": since}}
            )
            async with open_sse(live, **kwargs) as sse:
                hello = await sse.expect("connected")
                assert hello.json()["seq"] >= since
                target = hello.json()["seq"] + 5  # past the seam, into live events
                got = await sse.changes_until(target)
            assert [e.event for e in got] == ["item_created"] * len(got)
            assert [seq(e) for e in got] == list(range(since + 1, target + 1)), (
                f"since={since}, connected at {hello.json()['seq']}"
            )


async def test_resume_older_than_retention_gets_reset(tmp_path: Path) -> None:
    """A Last-Event-ID older than the retained event log gets `event: reset` (the client
    reloads its snapshot) instead of a silent gap; live events follow the reset."""
    settings = Settings(data_dir=tmp_path / "d", environment="development", event_retention=100)
    async with serve(settings) as live:
        alice = await live.user("alice")
        async with live.http() as http:
            r = await http.post(
                "/api/items/bulk",
                headers=alice.headers,
                json={"items": [{"title": f"t{i}"} for i in range(130)]},
            )
            assert r.status_code == 201
            r = await http.post(
                "/api/items/bulk",
                headers=alice.headers,
                json={"items": [{"title": f"u{i}"} for i in range(130)]},
            )
            assert r.status_code == 201
            current = await settled(live)
            assert current == 260
            oldest = (await live.app.state.store.events_since(0, 1)).events
            assert not oldest, "the log should have been trimmed to the retention"

            headers = {**alice.headers, "Last-Event-ID": "5"}
            async with open_sse(live, headers=headers) as sse:
                assert (await sse.expect("connected")).json() == {"seq": current}
                reset = await sse.expect("reset")
                assert reset.json() == {"seq": current}
                item = await create_item(http, alice, title="after the reset")
                nxt = await sse.expect("item_created")
                assert (seq(nxt), nxt.json()) == (current + 1, item)


async def test_resume_from_the_future_gets_reset(live: Live) -> None:
    """A Last-Event-ID larger than the current seq (the client saw another database, e.g. one
    restored from an older backup) gets `event: reset` right away, not silence until the seq
    catches up with it; live events follow."""
    alice = await live.user("alice")
    async with live.http() as http:
        await create_item(http, alice)
        current = await settled(live)
        headers = {**alice.headers, "Last-Event-ID": str(current + 1000)}
        async with open_sse(live, headers=headers) as sse:
            assert (await sse.expect("connected")).json() == {"seq": current}
            item = await create_item(http, alice, title="live")
            try:
                async with asyncio.timeout(3):
                    first = await sse.next()
            except TimeoutError:
                pytest.fail(
                    f"Last-Event-ID {current + 1000} > seq {current}: no reset, and the live "
                    f"event {current + 1} was dropped as already seen"
                )
            assert first is not None and first.event == "reset", first
            nxt = await sse.expect("item_created")
            assert (seq(nxt), nxt.json()) == (current + 1, item)


async def test_filters_see_items_enter_and_leave(live: Live) -> None:
    """`?owner_id=` and `?status=` (alone or together) deliver the changes whose item matches
    before OR after the change: a `status=active&owner_id=bob` subscriber sees bob's item
    created, leave its view (completed), re-enter it (active again) and be deleted."""
    alice, bob = await live.user("alice"), await live.user("bob")
    streams: dict[str, dict[str, Any]] = {
        "bob": {"owner_id": bob.id},
        "completed": {"status": "completed"},
        "bob-active": {"owner_id": bob.id, "status": "active"},
    }
    got: dict[str, list[tuple[str, int]]] = {}
    async with (
        live.http() as http,
        open_sse(live, headers=alice.headers, params=streams["bob"]) as s_bob,
        open_sse(live, headers=alice.headers, params=streams["completed"]) as s_completed,
        open_sse(live, headers=alice.headers, params=streams["bob-active"]) as s_bob_active,
    ):
        readers = {"bob": s_bob, "completed": s_completed, "bob-active": s_bob_active}
        for sse in readers.values():
            await sse.expect("connected")
        a1 = await create_item(http, alice, title="a1")
        b1 = await create_item(http, bob, title="b1")
        b2 = await create_item(http, bob, title="b2", status="completed")
        await update_item(http, bob, b1["id"], status="completed")
        await update_item(http, alice, a1["id"], status="completed")
        await delete_item(http, bob, b2["id"])
        b3 = await create_item(http, bob, title="b3")
        await delete_item(http, bob, b3["id"])
        a2 = await create_item(http, alice, title="a2", status="completed")
        m = await create_item(http, bob, title="m")  # enters bob-active
        await update_item(http, bob, m["id"], status="completed")  # leaves it
        await update_item(http, bob, m["id"], title="m2")  # outside it: not seen
        await update_item(http, bob, m["id"], status="active")  # re-enters it
        reactivated = await settled(live)
        await delete_item(http, bob, m["id"])  # leaves it for good
        last = await settled(live)
        ends = {"bob": last, "completed": reactivated, "bob-active": last}
        for name, sse in readers.items():
            events = await sse.changes_until(ends[name])
            assert seq(events[-1]) == ends[name]
            got[name] = [(e.event, e.json()["id"]) for e in events]

    c, u, d = "item_created", "item_updated", "item_deleted"
    assert got["bob"] == [
        (c, b1["id"]),
        (c, b2["id"]),
        (u, b1["id"]),
        (d, b2["id"]),
        (c, b3["id"]),
        (d, b3["id"]),
        (c, m["id"]),
        (u, m["id"]),
        (u, m["id"]),
        (u, m["id"]),
        (d, m["id"]),
    ]
    assert got["completed"] == [
        (c, b2["id"]),
        (u, b1["id"]),
        (u, a1["id"]),
        (d, b2["id"]),
        (c, a2["id"]),
        (u, m["id"]),  # enters
        (u, m["id"]),  # changes inside
        (u, m["id"]),  # leaves
    ]
    assert got["bob-active"] == [
        (c, b1["id"]),
        (u, b1["id"]),  # leaves
        (c, b3["id"]),
        (d, b3["id"]),
        (c, m["id"]),
        (u, m["id"]),  # leaves
        (u, m["id"]),  # re-enters
        (d, m["id"]),
    ]


async def test_requires_credentials(live: Live) -> None:
    """Without a token, or with a forged one, the stream answers 401 and opens nothing."""
    async with live.http() as http:
        r = await http.get("/api/events")
        assert r.status_code == 401
        r = await http.get("/api/events", headers={"Authorization": "Bearer v1.1.9999999999.x"})
        assert r.status_code == 401
        r = await http.get("/api/events", params={"token": "nope"})
        assert r.status_code == 401
    assert len(live.ring) == 0


@pytest.mark.parametrize("how", ["bearer", "cookie", "query"])
async def test_authenticates_by_bearer_cookie_or_query_token(live: Live, how: str) -> None:
    """EventSource cannot set headers, so besides the bearer token the session cookie and
    `?token=` are accepted; each opens the stream."""
    alice = await live.user("alice")
    kwargs: dict[str, Any] = {
        "bearer": {"headers": alice.headers},
        "cookie": {"cookies": {live.settings.cookie_name: alice.token}},
        "query": {"params": {"token": alice.token}},
    }[how]
    async with live.http() as http, open_sse(live, **kwargs) as sse:
        await sse.expect("connected")
        item = await create_item(http, alice)
        ev = await sse.expect("item_created")
        assert ev.json() == item


async def test_login_cookie_from_the_api_opens_the_stream(live: Live) -> None:
    """The cookie the real /api/login sets is what a browser's EventSource sends."""
    async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as http:
        creds = {"username": "carol", "password": "correct horse"}
        assert (await http.post("/api/register", json=creds)).status_code == 201
        assert (await http.post("/api/login", json=creds)).status_code == 200
        assert live.settings.cookie_name in http.cookies
        async with aconnect_sse(http, "GET", "/api/events") as source:
            assert source.response.status_code == 200
            await EventStream(source.response, TIMEOUT).expect("connected")
