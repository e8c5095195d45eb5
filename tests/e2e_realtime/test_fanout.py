"""Change events across `duckcast serve --workers 3` with real Redis: every subscriber on every
worker gets every event once, in seq order; snapshots join the stream without gap or duplicate;
filters and authentication hold."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
import websockets
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect as ws_connect

from tests.e2e_realtime.clients import (
    Event,
    Subscriber,
    WriteLog,
    all_reach,
    assert_exact,
    http_client,
    list_everything,
    list_page,
    signup_all,
    until,
    write_mix,
)
from tests.e2e_realtime.conftest import Service
from tests.sse import EventStream

pytestmark = pytest.mark.e2e


async def test_every_subscriber_on_every_worker_gets_every_event_once_in_order(
    service: Service,
) -> None:
    """1,000 concurrent writes through all three workers reach each of 30 SSE and 30 WebSocket
    (protobuf and JSON) subscribers, wherever it is connected, exactly once and in seq order:
    the seqs each one received are exactly (seq before, seq of the final listing]."""
    base = service.url
    accounts = await signup_all(base, "alice", "bob", "carol")
    start = (await list_page(base, accounts[0]))["seq"]
    subs = [Subscriber(base, accounts[0].token, "sse", since=start) for _ in range(30)]
    subs += [
        Subscriber(base, accounts[1].token, "ws-pb" if i % 2 else "ws-json", since=start)
        for i in range(30)
    ]
    for sub in subs:
        sub.start()
    await until(lambda: all(s.open for s in subs), 30, "every subscriber to connect")

    # Each subscriber is its own TCP connection, accepted by whichever worker wins the shared
    # listening socket; check from /proc that they really are spread over several workers.
    owner = service.worker_of_ports()
    per_worker = Counter(owner.get(s.local_port) for s in subs)
    assert None not in per_worker, f"subscriber connections not found in /proc: {per_worker}"
    assert len(per_worker) >= 2, f"all subscribers landed on one worker: {per_worker}"

    log = await write_mix(base, accounts, total=1000, concurrency=12)
    assert log.failures == [], log.failures[:5]
    last = (await list_page(base, accounts[0]))["seq"]
    assert last == start + 1000, "each acknowledged write is exactly one event"

    await all_reach(subs, last, 60)
    reference = [(e.seq, e.type, e.item_id) for e in subs[0].events]
    for sub in subs:
        assert_exact(sub, start + 1, last)
        assert sub.ends == [] and sub.connections == 1, (sub.transport, sub.ends)
        assert [(e.seq, e.type, e.item_id) for e in sub.events] == reference
    await asyncio.gather(*(s.stop() for s in subs))


def apply_events(state: dict[int, dict], events: list[Event]) -> None:
    """What a client keeping a local copy does with each event; it fails on any event that
    does not fit the copy (a duplicate or a gap at the snapshot/stream seam shows up here)."""
    for e in events:
        if e.type == "created":
            assert e.item_id not in state, f"seq {e.seq}: created {e.item_id} already in snapshot"
            state[e.item_id] = e.item
        elif e.type == "updated":
            assert e.item_id in state, f"seq {e.seq}: updated {e.item_id} unknown to the client"
            assert e.item["version"] == state[e.item_id]["version"] + 1, f"seq {e.seq}: version"
            state[e.item_id] = e.item
        elif e.type == "deleted":
            assert state.pop(e.item_id, None) is not None, f"seq {e.seq}: deleted unknown item"
        else:
            raise AssertionError(f"seq {e.seq}: unexpected {e.type} event")


async def test_snapshot_then_subscribe_converges_to_the_store_state(service: Service) -> None:
    """A client that lists the items, subscribes from the list's `seq` while writes go on, and
    applies each event to its copy, ends with exactly the store's items (every field): the
    list's seq and the stream meet without gap or duplicate, for SSE and both WS formats."""
    base = service.url
    accounts = await signup_all(base, "alice", "bob")
    await write_mix(base, accounts, total=20, concurrency=2, creates_only=True)
    log = WriteLog()
    # 6 writers owning at most 10 items each, plus the 20 seeded: one page of 100 holds all.
    writes = asyncio.create_task(
        write_mix(base, accounts, total=400, concurrency=6, log=log, max_live=10, seed=4)
    )
    clients: list[tuple[Subscriber, dict[int, dict]]] = []
    for n, transport in enumerate(("sse", "ws-json", "ws-pb")):
        await until(lambda n=n: log.total >= 40 * (n + 1), 60, "writes to get going")
        page = await list_page(base, accounts[n % 2])
        assert page["pages"] == 1 and len(page["items"]) == page["total"], "one full page"
        snapshot = {it["id"]: it for it in page["items"]}
        sub = Subscriber(base, accounts[n % 2].token, transport, since=page["seq"]).start()
        clients.append((sub, snapshot))
    await writes
    assert log.failures == [], log.failures[:5]

    final, last = await list_everything(base, accounts[0])
    for sub, snapshot in clients:
        await all_reach([sub], last, 30)
        assert_exact(sub, sub.since + 1, last)
        apply_events(snapshot, sub.events)
        assert snapshot == final, f"{sub.transport} client's copy differs from the store"
    assert clients[0][0].since < last - 200, "the subscriptions started while writes went on"
    await asyncio.gather(*(sub.stop() for sub, _ in clients))


async def test_filters_deliver_only_matching_events(service: Service) -> None:
    """`owner_id` and `status` narrow a subscription to exactly the events whose item matches
    before or after the change (created: after; deleted: before; updated: either, so an item
    is seen leaving the view), over SSE and WebSocket alike, in seq order."""
    base = service.url
    alice, bob = await signup_all(base, "alice", "bob")
    start = (await list_page(base, alice))["seq"]
    everything = Subscriber(base, alice.token, "ws-json", since=start).start()
    filters = {
        "owner": ({"owner_id": alice.id}, lambda it: it["owner_id"] == alice.id),
        "status": ({"status": "completed"}, lambda it: it["status"] == "completed"),
        "both": (
            {"owner_id": bob.id, "status": "active"},
            lambda it: it["owner_id"] == bob.id and it["status"] == "active",
        ),
    }
    filtered = [
        (Subscriber(base, bob.token, transport, since=start, params=params).start(), match)
        for params, match in filters.values()
        for transport in ("sse", "ws-pb")
    ]
    log = await write_mix(base, [alice, bob], total=300, concurrency=4, seed=6)
    assert log.failures == [], log.failures[:5]
    last = (await list_page(base, alice))["seq"]
    await all_reach([everything], last, 30)
    assert_exact(everything, start + 1, last)

    leaving: list[int] = []
    for sub, match in filtered:
        expected = [
            e.seq
            for e in everything.events
            if match(e.item) or (e.previous is not None and match(e.previous))
        ]
        leaving += [
            e.seq
            for e in everything.events
            if e.type == "updated" and not match(e.item) and match(e.previous)
        ]
        assert 0 < len(expected) < 300, "the filter matches some events, not all"
        await all_reach([sub], expected[-1], 30)
        assert sub.seqs == expected, (sub.transport, sub.params)
    assert leaving, "the mix has updates that take items out of a view"
    await asyncio.gather(everything.stop(), *(sub.stop() for sub, _ in filtered))


async def test_streams_refuse_clients_without_credentials(service: Service) -> None:
    """SSE answers 401 and the WebSocket handshake is refused (or closed with 4401) without a
    valid token; the same token then works, also as `?token=` (browsers cannot set headers)."""
    base = service.url
    (alice,) = await signup_all(base, "alice")
    async with http_client(base) as client:
        for headers, params in [
            ({}, {}),
            ({"Authorization": "Bearer nope"}, {}),
            ({}, {"token": "nope"}),
        ]:
            async with client.stream("GET", "/api/events", headers=headers, params=params) as r:
                assert r.status_code == 401, (headers, params)
                assert "detail" in json.loads(await r.aread())
        async with aconnect_sse(client, "GET", "/api/events", params={"token": alice.token}) as s:
            assert s.response.status_code == 200
            await EventStream(s.response, timeout=10).expect("connected")

    for query in ("", "?token=nope", "?format=json&token=nope"):
        try:
            async with ws_connect(f"{service.ws_url}/ws/items{query}", proxy=None) as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 4401, query
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code in (401, 403), query
    async with ws_connect(
        f"{service.ws_url}/ws/items?format=json&token={alice.token}", proxy=None
    ) as ws:
        assert ws.protocol.state.name == "OPEN"
