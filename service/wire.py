"""The public wire format in one place, shared by workers and the store: protobuf messages to
JSON-ready dicts (the JSON shape mirrors protos/duckcast.proto field for field), timestamps,
and the rules for values that arrive as text (integers, statuses)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal, get_args

from google.protobuf.message import Message

from service.pb import duckcast_pb2 as pb

Status = Literal["active", "completed"]
STATUSES: tuple[Status, ...] = get_args(Status)
INT64_MAX = 2**63 - 1
MAX_INT_DIGITS = len(str(INT64_MAX))


@dataclass(frozen=True)
class Bounds:
    """The integers a parameter accepts, [low, high]."""

    low: int
    high: int


# The parameter rules of the item routes, read both by their FastAPI declarations (validation
# and OpenAPI) and by the lean handlers that answer their well-formed requests.
ID = Bounds(1, INT64_MAX)
PAGE = Bounds(1, 1_000_000)
LIMIT = Bounds(1, 100)
PAGE_DEFAULT = 1
LIMIT_DEFAULT = 20
QUERY_MAX_LENGTH = 200


def ascii_int(text: str | None) -> int | None:
    """`text` as a non-negative integer if it is 1-19 ASCII digits, else None: the one rule for
    integers that arrive as text (path, query, headers), on every route.

    ASCII digits only: `str.isdigit()` also accepts '²', '①' and other scripts' digits, which
    `int()` then rejects or reads differently; `int()` alone also takes '+5', ' 5', '1_0'."""
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > MAX_INT_DIGITS:
        return None
    return int(text)


def bounded_int(text: str | None, low: int, high: int) -> int | None:
    """`text` as an integer in [low, high] (see ascii_int), or None if it is anything else."""
    value = ascii_int(text)
    return value if value is not None and low <= value <= high else None


# -- timestamps: integer microseconds in the store, Timestamp in protobuf, RFC 3339 in JSON --


def set_us(ts: Any, us: int) -> None:
    ts.seconds, micros = divmod(us, 1_000_000)
    ts.nanos = micros * 1000


def to_us(ts: Any) -> int:
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1000


def rfc3339(ts: Any) -> str:
    """`2026-11-28T00:12:56.123456Z`, or without the fraction when it is zero (isoformat)."""
    micros = ts.nanos // 1000
    second = _rfc3339_second(ts.seconds)
    return f"{second}.{micros:06d}Z" if micros else f"{second}Z"


@lru_cache(maxsize=1024)
def _rfc3339_second(seconds: int) -> str:
    # A create's two timestamps, and a page's items written close together, share seconds:
    # formatting the datetime was about half of rendering a created item (py-spy).
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None).isoformat()


# -- protobuf -> JSON-ready dicts (hand-written: json_format is 100x slower) -----------------


def user_json(u: pb.User) -> dict[str, Any]:
    return {"id": u.id, "username": u.username, "created_at": rfc3339(u.created_at)}


def item_json(it: pb.Item) -> dict[str, Any]:
    return {
        "id": it.id,
        "title": it.title,
        "description": it.description,
        "status": it.status,
        "priority": it.priority,
        "owner_id": it.owner_id,
        "created_at": rfc3339(it.created_at),
        "updated_at": rfc3339(it.updated_at),
        "version": it.version,
    }


def item_list_json(items: pb.ItemList) -> dict[str, Any]:
    return {"items": [item_json(i) for i in items.items]}


def page_json(p: pb.ItemPage) -> dict[str, Any]:
    return {
        "items": [item_json(i) for i in p.items],
        "total": p.total,
        "page": p.page,
        "pages": p.pages,
        "limit": p.limit,
        "seq": p.seq,
    }


def stats_json(s: pb.Stats) -> dict[str, Any]:
    return {
        "total": s.total,
        "active": s.active,
        "completed": s.completed,
        "avg_priority": s.avg_priority,
    }


def login_json(r: pb.LoginResponse) -> dict[str, Any]:
    return {
        "token": r.token,
        "token_type": r.token_type,
        "expires_at": rfc3339(r.expires_at),
        "user": user_json(r.user),
    }


def upload_json(r: pb.UploadResult) -> dict[str, Any]:
    return {"filename": r.filename, "url": r.url, "size": r.size, "content_type": r.content_type}


def event_json(ev: pb.DomainEvent) -> dict[str, object]:
    has_item = ev.HasField("item") and ev.type != pb.RESET
    return {
        "type": pb.EventType.Name(ev.type),
        "seq": ev.seq,
        "item": item_json(ev.item) if has_item else None,
        "deleted_id": ev.deleted_id,
        "stats": stats_json(ev.stats) if ev.HasField("stats") else None,
        "previous": (
            {"owner_id": ev.previous.owner_id, "status": ev.previous.status}
            if ev.HasField("previous")
            else None
        ),
    }


# -- protobuf -> plain values, generically (request bodies: small, off the read path) --------


def proto_fields(msg: Message) -> dict[str, Any]:
    """The fields a protobuf message sets, as plain values (nested messages as dicts)."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.message_type is None:
            out[field.name] = list(value) if field.is_repeated else value
        elif field.is_repeated:
            out[field.name] = [proto_fields(v) for v in value]
        else:
            out[field.name] = proto_fields(value)
    return out
