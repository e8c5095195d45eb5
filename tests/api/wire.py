"""Helpers for speaking the API in each of its three media types and reading answers back
into one comparable shape (plain dicts, timestamps as aware datetimes)."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.types import ASGIApp
from starlette.types import Message as AsgiMessage

from service.pb import duckcast_pb2 as pb

JSON = "application/json"
PROTOBUF = "application/protobuf"
X_PROTOBUF = "application/x-protobuf"
MEDIA_TYPES = (JSON, PROTOBUF, X_PROTOBUF)
MEDIA_IDS = ("json", "protobuf", "x-protobuf")
TIMESTAMP_KEYS = frozenset({"created_at", "updated_at", "expires_at"})


def pb_to_dict(msg: Message) -> dict[str, Any]:
    """Every field of a protobuf message (set or not), nested messages as dicts, Timestamps as
    aware datetimes: the same shape `json_to_dict` gives a JSON body."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.message_type is None:
            out[field.name] = list(value) if field.is_repeated else value
        elif field.message_type.full_name == "google.protobuf.Timestamp":
            out[field.name] = value.ToDatetime(tzinfo=UTC)
        elif field.is_repeated:
            out[field.name] = [pb_to_dict(v) for v in value]
        else:
            out[field.name] = pb_to_dict(value)
    return out


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 UTC timestamp as the API writes it (`...Z`), refusing anything else."""
    assert isinstance(value, str), value
    assert value.endswith("Z"), f"timestamp {value!r} is not UTC with a Z suffix"
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0
    return parsed


def json_to_dict(value: Any) -> Any:
    """A JSON body with its timestamp fields parsed (and checked to be RFC 3339 UTC)."""
    if isinstance(value, dict):
        return {
            k: parse_rfc3339(v) if k in TIMESTAMP_KEYS else json_to_dict(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [json_to_dict(v) for v in value]
    return value


def encode(message_cls: type[Message], data: dict[str, Any]) -> bytes:
    return json_format.ParseDict(data, message_cls()).SerializeToString()


@dataclass(frozen=True)
class Wire:
    """One media type, used for both the request body and the Accept header."""

    media: str

    @property
    def is_pb(self) -> bool:
        return self.media != JSON

    def headers(self, auth: dict[str, str] | None = None) -> dict[str, str]:
        return {"Content-Type": self.media, "Accept": self.media, **(auth or {})}

    def body(self, message_cls: type[Message], data: dict[str, Any]) -> bytes:
        if self.is_pb:
            return encode(message_cls, data)
        return json.dumps(data).encode()

    async def send(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        message_cls: type[Message] | None = None,
        data: dict[str, Any] | None = None,
        auth: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        content = None
        headers = self.headers(auth)
        if message_cls is not None:
            content = self.body(message_cls, data or {})
        else:
            headers.pop("Content-Type")
        return await client.request(method, url, content=content, headers=headers, params=params)

    def decode(self, r: httpx.Response, message_cls: type[Message]) -> dict[str, Any]:
        """The success body as a dict, after checking the echoed media type."""
        content_type = r.headers.get("content-type", "")
        if self.is_pb:
            assert content_type == self.media, f"{content_type!r} != {self.media!r}"
            return pb_to_dict(message_cls.FromString(r.content))
        assert content_type.startswith(JSON), content_type
        decoded: dict[str, Any] = json_to_dict(r.json())
        return decoded

    def error(self, r: httpx.Response) -> str:
        """The error message, after checking the error body is well formed for this format."""
        return error_message(r, self.media)


def error_message(r: httpx.Response, media: str = JSON) -> str:
    assert 400 <= r.status_code < 500, (r.status_code, r.content[:300])
    content_type = r.headers.get("content-type", "")
    if media == JSON:
        assert content_type.startswith(JSON), content_type
        body = r.json()
        assert isinstance(body, dict) and set(body) == {"detail"}, body
        assert isinstance(body["detail"], str) and body["detail"], body
        return str(body["detail"])
    assert content_type == media, f"{content_type!r} != {media!r}"
    err = pb.Error.FromString(r.content)
    assert err.code == r.status_code, (err.code, r.status_code)
    assert err.message, "protobuf Error has no message"
    return err.message


async def raw_get(app: ASGIApp, raw_path: bytes) -> tuple[int, bytes]:
    """GET a path exactly as given (no client-side dot-segment removal), decoded the way an
    ASGI server decodes it: what a hostile client can really send."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": urllib.parse.unquote(raw_path.decode("ascii")),
        "raw_path": raw_path,
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "server": ("test", 80),
        "client": ("127.0.0.1", 5000),
    }
    status = 0
    body = bytearray()
    sent = False
    finished = asyncio.Event()

    async def receive() -> AsgiMessage:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()  # like a server: the client stays until the response is done
        return {"type": "http.disconnect"}

    async def send(message: AsgiMessage) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))
            if not message.get("more_body", False):
                finished.set()

    await app(scope, receive, send)
    return status, bytes(body)


def asgi_scope(
    kind: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], **extra: Any
) -> dict[str, Any]:
    """What an ASGI server would pass for this request, the path decoded as servers do."""
    return {
        "type": kind,
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": urllib.parse.quote(path).encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "server": ("test", 80),
        "client": ("127.0.0.1", 5000),
        **extra,
    }


async def first_of_stream(
    app: ASGIApp, path: str, token: str, root_path: str = ""
) -> tuple[int, dict[bytes, bytes]]:
    """Open an event stream through ASGI with `?token=`, wait for its first body bytes, then
    leave: the status and headers it answered."""
    started = asyncio.Event()
    answer: dict[str, Any] = {}
    received = False

    async def receive() -> AsgiMessage:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await started.wait()
        return {"type": "http.disconnect"}

    async def send(message: AsgiMessage) -> None:
        if message["type"] == "http.response.start":
            answer["status"], answer["headers"] = message["status"], dict(message["headers"])
        elif message.get("body"):
            started.set()

    scope = asgi_scope(
        "http",
        path,
        f"token={token}".encode(),
        [(b"host", b"test")],
        root_path=root_path,
        method="GET",
    )
    await asyncio.wait_for(app(scope, receive, send), 10)
    return answer["status"], answer["headers"]
