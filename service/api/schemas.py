"""JSON shapes: pydantic models validate request bodies (JSON, and protobuf after decoding,
so both formats obey the same rules) and document responses. The converters that serialise
answers live in service.wire. Field names mirror protos/; each model names the message it
mirrors (`protobuf_message`, listed in OpenAPI as `x-protobuf-message`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.pb import duckcast_pb2 as pb
from service.wire import STATUSES, Status

TITLE_MAX, DESCRIPTION_MAX, PRIORITY_MAX = 200, 10_000, 100
Title = Annotated[str, Field(min_length=1, max_length=TITLE_MAX)]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX)]
Priority = Annotated[int, Field(ge=0, le=PRIORITY_MAX)]


class Mirrored(BaseModel):
    """A JSON shape that mirrors a protobuf message of protos/duckcast.proto."""

    protobuf_message: ClassVar[type[Message]]


class Strict(Mirrored):
    model_config = ConfigDict(strict=True, extra="forbid")


class Credentials(Strict):
    protobuf_message = pb.RegisterRequest
    username: Annotated[str, Field(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
    password: Annotated[str, Field(min_length=8, max_length=128)]


class LoginIn(Strict):
    protobuf_message = pb.LoginRequest
    # No format rules at login: a wrong name is just a failed login (one 401 for all).
    username: Annotated[str, Field(max_length=200)]
    password: Annotated[str, Field(max_length=1024)]


class ItemCreate(Strict):
    protobuf_message = pb.ItemCreate
    title: Title
    description: Description = ""
    status: Status = "active"
    priority: Priority = 0


class ItemUpdate(Strict):
    protobuf_message = pb.ItemUpdate
    title: Title | None = None
    description: Description | None = None
    status: Status | None = None
    priority: Priority | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> ItemUpdate:
        if not self.model_fields_set:
            raise ValueError("give at least one of title, description, status, priority")
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name}: may not be null")
        return self


BULK_MAX = 1000


class BulkCreate(Strict):
    protobuf_message = pb.BulkCreateRequest
    items: Annotated[list[ItemCreate], Field(min_length=1, max_length=BULK_MAX)]


# -- response documentation (serialisation itself is done by the converters below) ---------


class UserOut(Mirrored):
    protobuf_message = pb.User
    id: int
    username: str
    created_at: datetime


class LoginOut(Mirrored):
    protobuf_message = pb.LoginResponse
    token: str
    token_type: Literal["bearer"]
    expires_at: datetime
    user: UserOut


class ItemOut(Mirrored):
    protobuf_message = pb.Item
    id: int
    title: str
    description: str
    status: Status
    priority: int
    owner_id: int
    created_at: datetime
    updated_at: datetime
    version: int


class ItemListOut(Mirrored):
    protobuf_message = pb.ItemList
    items: list[ItemOut]


class ItemPageOut(Mirrored):
    protobuf_message = pb.ItemPage
    items: list[ItemOut]
    total: int
    page: int
    pages: int
    limit: int
    seq: int


class StatsOut(Mirrored):
    protobuf_message = pb.Stats
    total: int
    active: int
    completed: int
    avg_priority: float


class UploadOut(Mirrored):
    protobuf_message = pb.UploadResult
    filename: str
    url: str
    size: int
    content_type: str


class ErrorOut(BaseModel):  # protobuf: `Error {code, message}`, not a mirror
    detail: str


_ITEM_CREATE_FIELDS = frozenset(ItemCreate.model_fields)


def valid_item_create(data: object) -> pb.ItemCreate | None:
    """`data` (a decoded body) as the ItemCreate it is when ItemCreate accepts it as it
    stands, else None (ItemCreate then explains). The hot path of POST /api/items: 1.4 µs
    instead of the model's 3.7 for `{"title": ...}`. It accepts nothing the model refuses
    (tests/api/test_create_body.py draws bodies to check it)."""
    if type(data) is not dict or not data.keys() <= _ITEM_CREATE_FIELDS:
        return None
    title = data.get("title")
    description = data.get("description", "")
    status = data.get("status", "active")
    priority = data.get("priority", 0)
    if (
        type(title) is str
        and 1 <= len(title) <= TITLE_MAX
        and type(description) is str
        and len(description) <= DESCRIPTION_MAX
        and type(status) is str
        and status in STATUSES
        and type(priority) is int  # not bool: the model is strict
        and 0 <= priority <= PRIORITY_MAX
    ):
        return pb.ItemCreate(title=title, description=description, status=status, priority=priority)
    return None


def item_create_pb(c: ItemCreate) -> pb.ItemCreate:
    return pb.ItemCreate(
        title=c.title, description=c.description, status=c.status, priority=c.priority
    )


def item_update_pb(u: ItemUpdate) -> pb.ItemUpdate:
    return pb.ItemUpdate(**{name: getattr(u, name) for name in u.model_fields_set})
