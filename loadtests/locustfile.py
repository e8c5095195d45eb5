"""Locust load profile for Duckcast, for ops teams: CRUD in JSON and in protobuf while SSE and
WebSocket subscribers hold change streams, all at once (the mixed scenario).

    python -m loadtests.locust_run --host http://127.0.0.1:8000 --seconds 30 --out results/
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 16 -t 1m

(from the repository root; the first writes CSV and HTML reports, see loadtests/README.md).

Accounts are made once, before any user starts (`--duckcast-accounts`, default 8: register and
log in, concurrently), and users share their tokens round-robin: password hashing is slow on
purpose, and a run should measure the API, not argon2.

- `JsonUser` / `ProtobufUser` (weight 3 each): create three items, then loop over a weighted
  mix: list 4, get 4, create 2, update 1, delete 1, stats 1. Only the owner may change an
  item, so updates and deletes target the user's own items; reads go to any item a list page
  showed (404 for one deleted meanwhile counts as success). Any other non-2xx is a failure.
  Request names carry the format: `/api/items [protobuf]`.
- `SseSubscriber` / `WebSocketSubscriber` (weight 1 each): hold one unfiltered stream from the
  seq of a list page, and reconnect with `Last-Event-ID` / `?since=` whenever it ends. Every
  event must have the next seq: a gap, a duplicate or an older seq is a failure (`seq gap`,
  `seq repeated`), and so is a `reset`. Each change is reported as a request named after its
  type (`item_created`...) whose response time is the commit-to-receipt latency: receipt time
  minus the item's `updated_at`, stamped by the store just before its commit (deletes carry
  no commit time and are counted with time 0). The clocks of the load generator and the
  server must agree: run both on one host, or on NTP-synced hosts.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import gevent
import httpx
import requests
import websocket
from gevent.pool import Pool
from httpx_sse import ServerSentEvent, connect_sse
from locust import HttpUser, User, between, constant, events, task
from locust.env import Environment

from service.pb import duckcast_pb2 as pb

JSON = "application/json"
PROTOBUF = "application/protobuf"
PASSWORD = "locust-password-1"
KNOWN_IDS_MAX = 500  # ids seen in list pages, kept per user for reads
STREAM_TIMEOUT = 65.0  # the server sends a keep-alive at least every 30 s


# -- accounts, made once per run --------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    username: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


ACCOUNTS: list[Account] = []
_next_account = itertools.count()


def account() -> Account:
    if not ACCOUNTS:
        raise RuntimeError("no accounts: the test_start hook did not run or failed")
    return ACCOUNTS[next(_next_account) % len(ACCOUNTS)]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--duckcast-accounts",
        type=int,
        default=8,
        help="accounts registered before the run and shared by the users",
    )


@events.test_start.add_listener
def _make_accounts(environment: Environment, **_: Any) -> None:
    if ACCOUNTS or environment.host is None:
        return
    options = environment.parsed_options
    count = max(1, options.duckcast_accounts if options is not None else 8)
    run = f"{random.randrange(16**8):08x}"

    def make(n: int) -> Account:
        creds = {"username": f"lc_{run}_{n}", "password": PASSWORD}
        with requests.Session() as http:
            r = http.post(f"{environment.host}/api/register", json=creds, timeout=60)
            r.raise_for_status()
            r = http.post(f"{environment.host}/api/login", json=creds, timeout=60)
            r.raise_for_status()
            return Account(creds["username"], r.json()["token"])

    ACCOUNTS.extend(Pool(count).map(make, range(count)))


# -- CRUD users -------------------------------------------------------------------------------


class _CrudUser(HttpUser):
    """Shared flow; subclasses say how bodies are encoded and answers decoded."""

    abstract = True
    weight = 3
    wait_time = between(0.05, 0.5)
    media = JSON
    label = "json"

    def on_start(self) -> None:
        self.mine: list[int] = []
        self.seen: list[int] = []
        self.headers = {"Accept": self.media, **account().auth}
        for _ in range(3):
            self.create()

    # -- encoding, per subclass --------------------------------------------------------------

    def encode_create(self, fields: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def encode_update(self, fields: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def decode_item_id(self, body: bytes) -> int:
        raise NotImplementedError

    def decode_page_ids(self, body: bytes) -> list[int]:
        raise NotImplementedError

    # -- the mix -----------------------------------------------------------------------------

    def _send(self, method: str, path: str, name: str, ok: tuple[int, ...], **kw: Any) -> Any:
        headers = {**self.headers, **kw.pop("headers", {})}
        name = f"{name} [{self.label}]"
        with self.client.request(
            method, path, name=name, headers=headers, catch_response=True, **kw
        ) as r:
            if r.status_code not in ok:
                r.failure(f"{method} {name}: {r.status_code} {r.text[:200]}")
                return None
            r.success()
            return r

    @task(4)
    def list_items(self) -> None:
        page = random.choice((1, 1, 1, 2, 3))
        r = self._send("GET", f"/api/items?limit=20&page={page}", "/api/items?limit=20", (200,))
        if r is not None:
            self.seen = (self.decode_page_ids(r.content) + self.seen)[:KNOWN_IDS_MAX]

    @task(4)
    def get_item(self) -> None:
        pool = self.seen or self.mine
        if not pool:
            self.create()
            return
        # 404: someone else deleted it since we saw it; a fine answer for a reader
        self._send("GET", f"/api/items/{random.choice(pool)}", "/api/items/[id]", (200, 404))

    @task(2)
    def create(self) -> None:
        fields = {
            "title": f"locust item {random.randrange(1_000_000)}",
            "description": "created by loadtests/locustfile.py",
            "priority": random.randrange(101),
        }
        r = self._send(
            "POST",
            "/api/items",
            "/api/items",
            (201,),
            data=self.encode_create(fields),
            headers={"Content-Type": self.media},
        )
        if r is not None:
            self.mine.append(self.decode_item_id(r.content))

    @task(1)
    def update(self) -> None:
        if not self.mine:
            self.create()
            return
        fields = random.choice(
            (
                {"status": random.choice(("active", "completed"))},
                {"priority": random.randrange(101)},
                {"title": f"renamed {random.randrange(1_000_000)}"},
            )
        )
        self._send(
            "PATCH",
            f"/api/items/{random.choice(self.mine)}",
            "/api/items/[id]",
            (200,),
            data=self.encode_update(fields),
            headers={"Content-Type": self.media},
        )

    @task(1)
    def delete(self) -> None:
        if len(self.mine) < 2:  # keep something to update
            self.create()
            return
        item_id = self.mine.pop(random.randrange(len(self.mine)))
        self._send("DELETE", f"/api/items/{item_id}", "/api/items/[id]", (204,))

    @task(1)
    def stats(self) -> None:
        self._send("GET", "/api/stats", "/api/stats", (200,))


class JsonUser(_CrudUser):
    media = JSON
    label = "json"

    def encode_create(self, fields: dict[str, Any]) -> bytes:
        return json.dumps(fields).encode()

    def encode_update(self, fields: dict[str, Any]) -> bytes:
        return json.dumps(fields).encode()

    def decode_item_id(self, body: bytes) -> int:
        return int(json.loads(body)["id"])

    def decode_page_ids(self, body: bytes) -> list[int]:
        return [int(item["id"]) for item in json.loads(body)["items"]]


class ProtobufUser(_CrudUser):
    media = PROTOBUF
    label = "protobuf"

    def encode_create(self, fields: dict[str, Any]) -> bytes:
        return pb.ItemCreate(**fields).SerializeToString()

    def encode_update(self, fields: dict[str, Any]) -> bytes:
        return pb.ItemUpdate(**fields).SerializeToString()

    def decode_item_id(self, body: bytes) -> int:
        return int(pb.Item.FromString(body).id)

    def decode_page_ids(self, body: bytes) -> list[int]:
        return [int(item.id) for item in pb.ItemPage.FromString(body).items]


# -- stream subscribers ------------------------------------------------------------------------

EVENT_NAMES = {pb.CREATED: "item_created", pb.UPDATED: "item_updated", pb.DELETED: "item_deleted"}


class StreamEnded(Exception):
    """The server ended this connection (a reason to resume, not a failure)."""


class _Subscriber(User):
    """Holds one change stream, resumed from its last seq whenever it ends; checks that seqs
    come one by one and reports every change with its commit-to-receipt latency."""

    abstract = True
    weight = 1
    wait_time = constant(0)
    kind = "SSE"

    def on_start(self) -> None:
        self.account = account()
        self.last: int | None = None  # the last seq received
        self.conn: Any = None
        self.started = time.monotonic()

    def on_stop(self) -> None:
        self.disconnect()

    @task
    def hold_stream(self) -> None:
        if self.last is None:
            self.last = self.page_seq()
            if self.last is None:
                return
        try:
            self.stream()
        except StreamEnded as ended:  # the server's choice (1012, 4008, overflow): resume
            self.report("reconnect", 0.0, 0, note=str(ended))
        except Exception as exc:  # a connection that failed: a failure, then resume
            self.report("stream error", 0.0, 0, exc)
            gevent.sleep(0.1)
        finally:
            self.disconnect()

    def page_seq(self) -> int | None:
        """The seq of a list page: the stream starts right after what the page reflects."""
        started = time.perf_counter()
        try:
            r = requests.get(
                f"{self.host}/api/items",
                params={"limit": 1},
                headers=self.account.auth,
                timeout=30,
            )
            r.raise_for_status()
            seq = int(r.json()["seq"])
        except Exception as exc:
            self.report("start seq", time.perf_counter() - started, 0, exc)
            gevent.sleep(1)
            return None
        self.report("start seq", time.perf_counter() - started, len(r.content))
        return seq

    def stream(self) -> None:
        raise NotImplementedError

    def disconnect(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()

    def report(
        self, name: str, seconds: float, size: int, exc: Exception | None = None, note: str = ""
    ) -> None:
        self.environment.events.request.fire(
            request_type=self.kind,
            name=name,
            response_time=max(seconds, 0.0) * 1000,
            response_length=size,
            exception=exc,
            context={"note": note} if note else {},
        )

    def received(self, event: pb.DomainEvent, size: int) -> None:
        """One event off the wire: continuity check, then latency."""
        assert self.last is not None
        if event.type == pb.RESET:
            self.report("reset", 0.0, size, AssertionError(f"reset to {event.seq}"))
            self.last = event.seq
            return
        expected = self.last + 1
        if event.seq != expected:
            what = "seq gap" if event.seq > expected else "seq repeated"
            self.report(what, 0.0, size, AssertionError(f"got {event.seq}, expected {expected}"))
            if event.seq <= self.last:
                return
        self.last = event.seq
        name = EVENT_NAMES.get(event.type, f"type {event.type}")
        if event.type == pb.DELETED:
            self.report(name, 0.0, size)
            return
        stamp = event.item.updated_at
        committed = stamp.seconds + stamp.nanos / 1e9
        self.report(name, time.time() - committed, size)


class SseSubscriber(_Subscriber):
    kind = "SSE"

    def stream(self) -> None:
        assert self.last is not None
        started = time.perf_counter()
        headers = {**self.account.auth, "Last-Event-ID": str(self.last)}
        with (
            httpx.Client(timeout=STREAM_TIMEOUT, trust_env=False) as http,
            connect_sse(http, "GET", f"{self.host}/api/events", headers=headers) as source,
        ):
            r = source.response
            if r.status_code != 200:
                error = RuntimeError(r.status_code)
                self.report("connect", time.perf_counter() - started, 0, error)
                gevent.sleep(1)
                return
            self.report("connect", time.perf_counter() - started, 0)
            for event in source.iter_sse():  # as the bytes arrive
                self.sse_event(event)
        raise StreamEnded("end of stream")

    def sse_event(self, sse: ServerSentEvent) -> None:
        """One SSE event; any name but these (a `connected`, or the empty `message` httpx-sse
        0.4 yields after a keep-alive comment) carries no change."""
        if sse.event == "overflow":
            raise StreamEnded("overflow")
        size = len(sse.data)
        if sse.event == "reset":
            self.received(pb.DomainEvent(type=pb.RESET, seq=int(sse.id)), size)
        elif sse.event in ("item_created", "item_updated", "item_deleted"):
            body = json.loads(sse.data)
            event = pb.DomainEvent(seq=int(sse.id))
            if sse.event == "item_deleted":
                event.type, event.deleted_id = pb.DELETED, int(body["id"])
            else:
                event.type = pb.CREATED if sse.event == "item_created" else pb.UPDATED
                event.item.updated_at.FromJsonString(body["updated_at"])
            self.received(event, size)


class WebSocketSubscriber(_Subscriber):
    kind = "WS"

    def stream(self) -> None:
        assert self.host is not None and self.last is not None
        url = "ws" + self.host.removeprefix("http") + "/ws/items?" + urlencode({"since": self.last})
        started = time.perf_counter()
        self.conn = websocket.create_connection(
            url, timeout=STREAM_TIMEOUT, header=[f"Authorization: Bearer {self.account.token}"]
        )
        self.report("connect", time.perf_counter() - started, 0)
        while True:
            opcode, data = self.conn.recv_data(control_frame=False)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                raise StreamEnded(f"closed {code} {data[2:].decode(errors='replace')}")
            self.received(pb.DomainEvent.FromString(data), len(data))
