"""The typed Python client of Duckcast: `Client` (blocking) and `AsyncClient` (asyncio).

    from service.client import Client

    with Client("http://127.0.0.1:8000") as api:          # protobuf on the wire by default
        api.login("alice", "correct horse")                 # keeps the bearer token
        item = api.create_item("Buy milk", priority=3)      # -> duckcast.v1.Item
        page = api.list_items(limit=20, status="active")    # -> duckcast.v1.ItemPage
        for event in api.subscribe("ws", since=page.seq):   # -> duckcast.v1.DomainEvent
            print(event.seq, event.type, event.item.title)

Results are the generated messages of `protos/duckcast.proto` (`service.pb.duckcast_pb2`) in
either wire format (`format="json"` sends and reads JSON instead). Every call of the contract
is a method (service.client.calls documents each); `Idempotency-Key` and `If-Match` are the
`idempotency_key=` and `if_match=` arguments. Errors are `ClientError`s: `ApiError` subclasses
carry the HTTP `status` and the server's `detail`. GET, PUT, DELETE (and POST with an
idempotency key) are retried with backoff (service.client.retry). `subscribe()` resumes after
any disconnect without a gap or a duplicate (service.client.stream).
"""

from __future__ import annotations

from service.client.aio import AsyncClient, AsyncSubscription
from service.client.base import DEFAULT_URL
from service.client.calls import item_create
from service.client.codec import Format
from service.client.errors import (
    ApiError,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    ProtocolError,
    ServerError,
    ServiceUnavailable,
    SessionExpired,
    StreamRejected,
    TooManyRequests,
    TransportError,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
)
from service.client.retry import NO_RETRY, Retry
from service.client.stream import Transport
from service.client.sync import Client, Subscription
from service.pb.duckcast_pb2 import (
    CREATED,
    DELETED,
    RESET,
    UPDATED,
    DomainEvent,
    Item,
    ItemCreate,
    ItemList,
    ItemPage,
    LoginResponse,
    Stats,
    UploadResult,
    User,
)

__all__ = [
    "CREATED",
    "DEFAULT_URL",
    "DELETED",
    "NO_RETRY",
    "RESET",
    "UPDATED",
    "ApiError",
    "AsyncClient",
    "AsyncSubscription",
    "BadRequest",
    "Client",
    "ClientError",
    "Conflict",
    "DomainEvent",
    "Forbidden",
    "Format",
    "Item",
    "ItemCreate",
    "ItemList",
    "ItemPage",
    "LoginResponse",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "ProtocolError",
    "Retry",
    "ServerError",
    "ServiceUnavailable",
    "SessionExpired",
    "Stats",
    "StreamRejected",
    "Subscription",
    "TooManyRequests",
    "Transport",
    "TransportError",
    "Unauthorized",
    "Unprocessable",
    "UnsupportedMediaType",
    "UploadResult",
    "User",
    "item_create",
]
