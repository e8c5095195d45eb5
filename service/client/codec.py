"""Bodies on the wire: the generated messages of service.pb, sent and received as protobuf or
as the JSON that mirrors them field for field."""

from __future__ import annotations

from typing import Literal, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from service.client.errors import ProtocolError
from service.wire import proto_fields

Format = Literal["protobuf", "json"]
FORMATS: tuple[Format, ...] = ("protobuf", "json")
JSON = "application/json"
PROTOBUF = "application/protobuf"
MEDIA: dict[Format, str] = {"protobuf": PROTOBUF, "json": JSON}

M = TypeVar("M", bound=Message)


def encode(message: Message, fmt: Format) -> bytes:
    if fmt == "json":
        return orjson.dumps(proto_fields(message))
    return message.SerializeToString()


def decode(content: bytes, media: str, kind: type[M]) -> M:
    """`content` as a `kind` message, whichever format the server answered in."""
    media = media.split(";", 1)[0].strip().lower()
    try:
        if media.endswith("protobuf"):
            return kind.FromString(content)
        if media == JSON or media.endswith("+json"):
            data = orjson.loads(content)
            if not isinstance(data, dict):  # ParseDict raises TypeError on 0, [] or "x"
                raise ProtocolError(f"unreadable {kind.DESCRIPTOR.name} answer: not an object")
            # json_format is slow, but only on this client's side and only in JSON mode.
            return json_format.ParseDict(data, kind(), ignore_unknown_fields=True)
    except (DecodeError, orjson.JSONDecodeError, json_format.ParseError) as exc:
        raise ProtocolError(f"unreadable {kind.DESCRIPTOR.name} answer: {exc}") from None
    raise ProtocolError(f"unexpected answer type {media or '(none)'} for {kind.DESCRIPTOR.name}")
