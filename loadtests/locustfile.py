"""Locust load profile for Duckcast, for ops teams: a realistic mix of reads and writes.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 50 -r 10 -t 1m

Each simulated user registers its own account (a unique name), logs in for a bearer token,
creates a few items, then loops over a weighted mix: list pages, read items by id, create,
update and delete its own items, and read the stats. Two user classes share the load half and
half: `JsonUser` speaks JSON, `ProtobufUser` speaks protobuf (`application/protobuf` for bodies
and answers). Pick one by naming it at the end of the command line, e.g. `... -t 1m JsonUser`.

Only the owner may change an item, so updates and deletes target the user's own items; reads go
to any item a list page showed. An item another user deleted in the meantime answers 404, which
counts as success for reads. Every other non-2xx answer is a failure.

Registration and login hash passwords with argon2 on purpose (slow): ramp up with a modest
spawn rate (-r) so the first seconds measure the API, not the password hash.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

from locust import HttpUser, between, task
from locust.exception import StopUser

from service.pb import duckcast_pb2 as pb

JSON = "application/json"
PROTOBUF = "application/protobuf"
PASSWORD = "locust-password-1"
KNOWN_IDS_MAX = 500  # ids seen in list pages, kept per user for reads


class _DuckcastUser(HttpUser):
    """Shared flow; subclasses say how bodies are encoded and answers decoded."""

    abstract = True
    wait_time = between(0.05, 0.5)
    media = JSON

    def on_start(self) -> None:
        self.mine: list[int] = []
        self.seen: list[int] = []
        self.username = f"lc_{uuid.uuid4().hex[:24]}"
        self.headers = {"Accept": self.media}
        creds = {"username": self.username, "password": PASSWORD}
        with self.client.post(
            "/api/register",
            data=self.encode_credentials(creds, register=True),
            headers={**self.headers, "Content-Type": self.media},
            name="/api/register",
            catch_response=True,
        ) as r:
            if r.status_code != 201:
                r.failure(f"register: {r.status_code} {r.text[:200]}")
                raise StopUser
        with self.client.post(
            "/api/login",
            data=self.encode_credentials(creds, register=False),
            headers={**self.headers, "Content-Type": self.media},
            name="/api/login",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"login: {r.status_code} {r.text[:200]}")
                raise StopUser
            token = self.decode_token(r.content)
        self.headers["Authorization"] = f"Bearer {token}"
        for _ in range(3):
            self.create()

    # -- encoding, per subclass --------------------------------------------------------------

    def encode_credentials(self, creds: dict[str, str], register: bool) -> bytes:
        raise NotImplementedError

    def decode_token(self, body: bytes) -> str:
        raise NotImplementedError

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
            "/api/items/[id] PATCH",
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
        self._send("DELETE", f"/api/items/{item_id}", "/api/items/[id] DELETE", (204,))

    @task(1)
    def stats(self) -> None:
        self._send("GET", "/api/stats", "/api/stats", (200,))


class JsonUser(_DuckcastUser):
    media = JSON

    def encode_credentials(self, creds: dict[str, str], register: bool) -> bytes:
        return json.dumps(creds).encode()

    def decode_token(self, body: bytes) -> str:
        return str(json.loads(body)["token"])

    def encode_create(self, fields: dict[str, Any]) -> bytes:
        return json.dumps(fields).encode()

    def encode_update(self, fields: dict[str, Any]) -> bytes:
        return json.dumps(fields).encode()

    def decode_item_id(self, body: bytes) -> int:
        return int(json.loads(body)["id"])

    def decode_page_ids(self, body: bytes) -> list[int]:
        return [int(item["id"]) for item in json.loads(body)["items"]]


class ProtobufUser(_DuckcastUser):
    media = PROTOBUF

    def encode_credentials(self, creds: dict[str, str], register: bool) -> bytes:
        message = pb.RegisterRequest(**creds) if register else pb.LoginRequest(**creds)
        return message.SerializeToString()

    def decode_token(self, body: bytes) -> str:
        return pb.LoginResponse.FromString(body).token

    def encode_create(self, fields: dict[str, Any]) -> bytes:
        return pb.ItemCreate(**fields).SerializeToString()

    def encode_update(self, fields: dict[str, Any]) -> bytes:
        return pb.ItemUpdate(**fields).SerializeToString()

    def decode_item_id(self, body: bytes) -> int:
        return int(pb.Item.FromString(body).id)

    def decode_page_ids(self, body: bytes) -> list[int]:
        return [int(item.id) for item in pb.ItemPage.FromString(body).items]
