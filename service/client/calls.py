"""Every call of the Duckcast contract, once: what to send and how to read the answer.

Each function returns a `Call`; `Client` and `AsyncClient` expose them as methods of the same
name and signature (service.client.endpoints) that send the call and return its result. The
results are the generated messages of `protos/duckcast.proto` (`service.pb.duckcast_pb2`),
whichever format was on the wire.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypedDict, TypeVar, Unpack

import httpx
from google.protobuf.message import Message

from service.client.codec import MEDIA, Format, decode, encode
from service.pb import duckcast_pb2 as pb
from service.wire import Status

T = TypeVar("T")
M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content: bytes
    media: str
    headers: Mapping[str, str]

    @classmethod
    def of(cls, r: httpx.Response) -> Answer:
        return cls(r.status_code, r.content, r.headers.get("content-type", ""), r.headers)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its successful answer."""

    method: str
    path: str
    read: Callable[[Answer], T]
    body: Message | None = None
    params: Mapping[str, str | int] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    upload: tuple[str, bytes, str] | None = None  # multipart `file`: name, content, type
    # Safe to send again when an attempt's outcome is unknown (GET, PUT, DELETE, and POST
    # with an Idempotency-Key).
    idempotent: bool = False
    authenticated: bool = True
    # DELETE: a retry answering 404 after an attempt whose outcome is unknown means that
    # attempt deleted it.
    gone_is_done: bool = False
    session: Literal["set", "clear"] | None = None  # login sets the client's token, logout clears

    def request(self, fmt: Format, token: str | None) -> dict[str, Any]:
        """Keyword arguments for httpx's `request()`."""
        headers = {"Accept": MEDIA[fmt], **self.headers}
        if self.authenticated and token:
            headers["Authorization"] = f"Bearer {token}"
        args: dict[str, Any] = {"method": self.method, "url": self.path, "headers": headers}
        if self.params:
            args["params"] = self.params
        if self.body is not None:
            headers["Content-Type"] = MEDIA[fmt]
            args["content"] = encode(self.body, fmt)
        if self.upload is not None:
            args["files"] = {"file": self.upload}
        return args


def message(kind: type[M]) -> Callable[[Answer], M]:
    def read(answer: Answer) -> M:
        return decode(answer.content, answer.media, kind)

    return read


def nothing(answer: Answer) -> None:
    return None


def _if_match(version: int | None) -> dict[str, str]:
    return {} if version is None else {"If-Match": f'"{version}"'}


def _idempotency(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Idempotency-Key": key}


def _fields(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


# -- users and sessions ---------------------------------------------------------------------


def register(username: str, password: str) -> Call[pb.User]:
    """Create an account (`POST /api/register`); returns the new `User`. Does not sign in."""
    body = pb.RegisterRequest(username=username, password=password)
    return Call("POST", "/api/register", message(pb.User), body, authenticated=False)


def login(username: str, password: str) -> Call[pb.LoginResponse]:
    """Sign in (`POST /api/login`): the client keeps the returned token for later calls."""
    body = pb.LoginRequest(username=username, password=password)
    read = message(pb.LoginResponse)
    return Call("POST", "/api/login", read, body, authenticated=False, session="set")


def logout() -> Call[None]:
    """Revoke this client's token (`POST /api/logout`) and forget it."""
    return Call("POST", "/api/logout", nothing, session="clear")


def me() -> Call[pb.User]:
    """The signed-in `User` (`GET /api/me`)."""
    return Call("GET", "/api/me", message(pb.User), idempotent=True)


# -- items ----------------------------------------------------------------------------------


def list_items(
    page: int = 1,
    limit: int = 20,
    *,
    owner_id: int | None = None,
    status: Status | None = None,
    q: str | None = None,
) -> Call[pb.ItemPage]:
    """One page of items, newest first (`GET /api/items`); `ItemPage.seq` is the last change
    event the page reflects: subscribe with `since=page.seq` to follow it without a gap."""
    params = _fields(page=page, limit=limit, owner_id=owner_id, status=status, q=q)
    return Call("GET", "/api/items", message(pb.ItemPage), params=params, idempotent=True)


class PageWalk:
    """The pages of `GET /api/items` one after another, each item handed out once: items
    created meanwhile push older ones onto later pages. (An item deleted meanwhile can shift
    one onto a page already read: for an exact copy while others write, follow the first
    page with `subscribe(since=page.seq)` instead.)"""

    def __init__(self) -> None:
        self.page = 1
        self.done = False
        self._seen: set[int] = set()

    def fresh(self, result: pb.ItemPage) -> list[pb.Item]:
        items = [item for item in result.items if item.id not in self._seen]
        self._seen.update(item.id for item in items)
        self.done = self.page >= result.pages
        self.page += 1
        return items


def get_item(item_id: int) -> Call[pb.Item]:
    """One item (`GET /api/items/{id}`); `NotFound` if there is none."""
    return Call("GET", f"/api/items/{item_id}", message(pb.Item), idempotent=True)


def item_create(
    title: str,
    description: str | None = None,
    status: Status | None = None,
    priority: int | None = None,
) -> pb.ItemCreate:
    """An `ItemCreate` for `bulk_create` (unset fields take the server's defaults)."""
    return pb.ItemCreate(
        **_fields(title=title, description=description, status=status, priority=priority)
    )


def create_item(
    title: str,
    *,
    description: str | None = None,
    status: Status | None = None,
    priority: int | None = None,
    idempotency_key: str | None = None,
) -> Call[pb.Item]:
    """Create an item owned by the caller (`POST /api/items`). With an `idempotency_key`
    (e.g. `uuid4().hex`), the call is retried safely: the server answers a repeated key with
    the first answer instead of writing twice."""
    return Call(
        "POST",
        "/api/items",
        message(pb.Item),
        item_create(title, description, status, priority),
        headers=_idempotency(idempotency_key),
        idempotent=idempotency_key is not None,
    )


def bulk_create(
    items: Iterable[pb.ItemCreate | Mapping[str, Any]], *, idempotency_key: str | None = None
) -> Call[pb.ItemList]:
    """Create 1 to 1000 items at once, all or nothing (`POST /api/items/bulk`). Each item is an
    `ItemCreate` (see `item_create`) or a mapping of its fields."""
    body = pb.BulkCreateRequest(
        items=[it if isinstance(it, pb.ItemCreate) else pb.ItemCreate(**it) for it in items]
    )
    return Call(
        "POST",
        "/api/items/bulk",
        message(pb.ItemList),
        body,
        headers=_idempotency(idempotency_key),
        idempotent=idempotency_key is not None,
    )


class ItemChanges(TypedDict, total=False):
    """The fields `update_item` and `patch_item` set (any non-empty subset)."""

    title: str
    description: str
    status: Status
    priority: int


def _update(method: str, item_id: int, if_match: int | None, changes: ItemChanges) -> Call[pb.Item]:
    return Call(
        method,
        f"/api/items/{item_id}",
        message(pb.Item),
        pb.ItemUpdate(**changes),
        headers=_if_match(if_match),
        idempotent=method == "PUT",
    )


def update_item(
    item_id: int, *, if_match: int | None = None, **changes: Unpack[ItemChanges]
) -> Call[pb.Item]:
    """Set the given fields (`PUT /api/items/{id}`; retried like any PUT). With `if_match`
    (the `version` you last saw), `PreconditionFailed` if someone changed it since."""
    return _update("PUT", item_id, if_match, changes)


def patch_item(
    item_id: int, *, if_match: int | None = None, **changes: Unpack[ItemChanges]
) -> Call[pb.Item]:
    """Like `update_item`, as `PATCH` (not retried when its outcome is unknown)."""
    return _update("PATCH", item_id, if_match, changes)


def delete_item(item_id: int, *, if_match: int | None = None) -> Call[None]:
    """Delete an item you own (`DELETE /api/items/{id}`); `if_match` as in `update_item`."""
    return Call(
        "DELETE",
        f"/api/items/{item_id}",
        nothing,
        headers=_if_match(if_match),
        idempotent=True,
        gone_is_done=True,
    )


def stats() -> Call[pb.Stats]:
    """Counts over all items (`GET /api/stats`)."""
    return Call("GET", "/api/stats", message(pb.Stats), idempotent=True)


def upload(
    file: bytes | Path, *, filename: str | None = None, content_type: str | None = None
) -> Call[pb.UploadResult]:
    """Upload a file (`POST /api/upload`); the result's `url` serves it back."""
    if isinstance(file, Path):
        content, filename = file.read_bytes(), filename or file.name
    else:
        content = file
    part = (filename or "upload", content, content_type or "application/octet-stream")
    return Call("POST", "/api/upload", message(pb.UploadResult), upload=part)
