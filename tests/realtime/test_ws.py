"""WebSocket `GET /ws/items` through a real uvicorn server (embedded store, memory backplane)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.config import Settings
from service.pb import duckcast_pb2 as pb
from service.wire import item_json, stats_json
from tests.realtime.conftest import (
    Account,
    Live,
    create_item,
    delete_item,
    recv,
    recv_event,
    recv_json,
    serve,
    settled,
    subscribed,
    until,
    update_item,
    writing,
    ws_connect,
)


async def test_protobuf_frames_by_default(live: Live) -> None:
    """Each change is one binary frame, a DomainEvent with its type, seq, the item (on a
    delete: its last state, plus deleted_id) and the stats right after the change."""
    alice = await live.user("alice")
    async with live.http() as http, ws_connect(live, alice) as ws:
        await subscribed(live, 1)
        start = await settled(live)
        created = await create_item(http, alice, title="proto", priority=40)
        stats1 = (await http.get("/api/stats", headers=alice.headers)).json()
        updated = await update_item(http, alice, created["id"], status="completed")
        stats2 = (await http.get("/api/stats", headers=alice.headers)).json()
        await delete_item(http, alice, created["id"])
        stats3 = (await http.get("/api/stats", headers=alice.headers)).json()

        events = [await recv_event(ws) for _ in range(3)]
    assert [(e.type, e.seq) for e in events] == [
        (pb.CREATED, start + 1),
        (pb.UPDATED, start + 2),
        (pb.DELETED, start + 3),
    ]
    assert events[0].item.title == "proto" and events[0].item.priority == 40
    assert item_json(events[0].item) == created
    assert item_json(events[1].item) == updated
    assert item_json(events[2].item) == updated  # the item as it was when deleted
    assert [e.deleted_id for e in events] == [0, 0, created["id"]]
    assert [stats_json(e.stats) for e in events] == [stats1, stats2, stats3]


async def test_json_frames_mirror_the_protobuf_ones(live: Live) -> None:
    """With `?format=json` each change is a text frame with the same fields as the protobuf
    DomainEvent: type (its name), seq, item (as the REST API shows it), deleted_id, stats,
    previous (null on a create)."""
    alice = await live.user("alice")
    async with (
        live.http() as http,
        ws_connect(live, alice) as binary,
        ws_connect(live, alice, params={"format": "json"}) as text,
    ):
        await subscribed(live, 2)
        created = await create_item(http, alice, title="twice", description="both")
        await update_item(http, alice, created["id"], priority=9)
        await delete_item(http, alice, created["id"])
        for _ in range(3):
            ev, js = await recv_event(binary), await recv_json(text)
            assert set(js) == {"type", "seq", "item", "deleted_id", "stats", "previous"}
            assert js["type"] == pb.EventType.Name(ev.type)
            assert js["seq"] == ev.seq
            assert js["item"] == item_json(ev.item)
            assert js["deleted_id"] == ev.deleted_id
            assert js["stats"] == stats_json(ev.stats)
            if ev.HasField("previous"):
                prev = ev.previous
                assert js["previous"] == {"owner_id": prev.owner_id, "status": prev.status}
            else:
                assert js["previous"] is None and ev.type == pb.CREATED
        assert js["type"] == "DELETED" and js["deleted_id"] == created["id"]


async def test_since_resumes_without_gap_or_duplicate(live: Live) -> None:
    """`?since=n` yields every event after n in order, then the live ones, with no gap and no
    duplicate at the seam, while writes keep committing during the connect."""
    alice = await live.user("alice")
    async with writing(live, alice) as committed:
        for offset in (0, 1, 3, 30, 0, 2):
            await until(lambda: len(committed) > 35, what="enough history")
            since = committed[-1] - offset
            async with ws_connect(live, alice, params={"since": since}) as ws:
                target = committed[-1] + 5
                got: list[int] = []
                while not got or got[-1] < target:
                    got.append((await recv_event(ws)).seq)
            assert got == list(range(since + 1, target + 1)), f"since={since}"


async def test_refused_without_credentials(live: Live) -> None:
    """Without a valid token the WebSocket is refused: the handshake fails (403) or the
    socket is closed with 4401; no subscription is registered."""
    alice = await live.user("alice")
    for who in (None, Account(alice.id, "forged", alice.token + "x")):
        try:
            async with ws_connect(live, who) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(ws)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        except InvalidStatus as refused:
            assert refused.response.status_code in (401, 403)
    assert len(live.ring) == 0


async def test_slow_subscriber_closed_4008_fast_one_gets_everything(tmp_path: Path) -> None:
    """A subscriber that stops reading falls behind once the TCP buffers are full; once its
    position has left the ring (20 events here) while its send stayed blocked for
    `stream_stall_seconds`, the ring's sweep drops it and, once its socket drains, it is closed
    with 4008 after an in-order prefix of the events. A concurrent subscriber that keeps
    reading receives every event, in order, unaffected."""
    settings = Settings(
        data_dir=tmp_path / "d",
        environment="development",
        stream_ring_events=20,
        stream_stall_seconds=0.5,
    )
    async with serve(settings) as live:
        alice = await live.user("alice")
        hub = live.ring
        start = await settled(live)
        # A small receive buffer and a one-frame queue make "stops reading" bite soon.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live.port))
        async with (
            live.http() as http,
            ws_connect(live, alice, sock=sock, max_queue=1) as slow,
            ws_connect(live, alice) as fast,
        ):
            await subscribed(live, 2)
            fast_seqs: list[int] = []

            async def read_fast() -> None:
                while True:
                    fast_seqs.append((await recv_event(fast)).seq)

            reader = asyncio.create_task(read_fast())
            try:
                # 8 events of 9 kB (incompressible) per commit: fewer than the ring holds, so
                # a subscriber that keeps reading never leaves it
                big = [
                    {"title": f"big {n}", "description": secrets.token_hex(4500)} for n in range(8)
                ]
                writes = 0
                while len(hub) == 2:
                    assert writes < 500, "the slow subscriber was never dropped"
                    r = await http.post(
                        "/api/items/bulk", json={"items": big}, headers=alice.headers
                    )
                    assert r.status_code == 201
                    writes += 1
                for n in range(5):  # life goes on for the others
                    await create_item(http, alice, title=f"after {n}")
                final = await settled(live)
                await until(
                    lambda: bool(fast_seqs) and fast_seqs[-1] >= final,
                    what="the fast subscriber got everything",
                )
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            assert fast_seqs == list(range(start + 1, final + 1))
            assert len(hub) == 1

            slow_seqs: list[int] = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    slow_seqs.append((await recv_event(slow)).seq)
            assert closed.value.rcvd is not None, "no close frame from the server"
            assert closed.value.rcvd.code == 4008, closed.value.rcvd
            assert slow_seqs == list(range(start + 1, start + 1 + len(slow_seqs)))
            assert len(slow_seqs) < final - start


async def test_snapshot_then_subscribe_converges(live: Live) -> None:
    """GET /api/items carries the seq it reflects; subscribing with `?since=` that seq while
    writes continue, and applying each event to the snapshot, ends exactly at the store's final
    state (no change missed at the seam, none applied twice)."""
    alice = await live.user("alice")
    rng = random.Random(7)
    async with live.http() as http:
        for i in range(30):
            await create_item(http, alice, title=f"seed {i}", priority=i)
        ids = [it["id"] for it in (await list_all(http, alice))[0].values()]
        stop = asyncio.Event()
        ops = 0

        async def mutate() -> None:
            nonlocal ops
            async with live.http() as h:
                while not stop.is_set():
                    roll = rng.random()
                    if roll < 0.3 and len(ids) < 80:
                        ids.append((await create_item(h, alice, title=f"new {ops}"))["id"])
                    elif roll < 0.5 and len(ids) > 10:
                        await delete_item(h, alice, ids.pop(rng.randrange(len(ids))))
                    else:
                        await update_item(
                            h,
                            alice,
                            rng.choice(ids),
                            priority=rng.randrange(101),
                            status=rng.choice(["active", "completed"]),
                        )
                    ops += 1

        mutator = asyncio.create_task(mutate())
        try:
            await until(lambda: ops >= 10, what="writes under way")
            state, seq = await list_all(http, alice)
            applied = seq
            async with ws_connect(live, alice, params={"since": seq, "format": "json"}) as ws:
                target = ops + 40
                while ops < target:
                    applied = apply(state, await recv_json(ws), applied)
                stop.set()
                await mutator
                final_seq = await live.app.state.store.ping()
                while applied < final_seq:
                    applied = apply(state, await recv_json(ws), applied)
        finally:
            stop.set()
            await mutator
        final, final_listing_seq = await list_all(http, alice)
    assert final_listing_seq == final_seq
    assert state == final


async def list_all(http: Any, who: Account) -> tuple[dict[int, dict[str, Any]], int]:
    r = await http.get("/api/items", params={"limit": 100}, headers=who.headers)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["pages"] <= 1, "the snapshot must fit in one page"
    return {it["id"]: it for it in page["items"]}, page["seq"]


def apply(state: dict[int, dict[str, Any]], ev: dict[str, Any], applied: int) -> int:
    assert ev["seq"] == applied + 1, f"gap or duplicate: got {ev['seq']} after {applied}"
    if ev["type"] == "DELETED":
        del state[ev["deleted_id"]]
    else:
        state[ev["item"]["id"]] = ev["item"]
    seq: int = ev["seq"]
    return seq
