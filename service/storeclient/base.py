"""The store client contract: typed calls over one `call(StoreRequest) -> StoreResponse`.

Implementations: `socket.SocketStoreClient` (workers, one multiplexed connection to the store
process) and `inprocess.InProcessStoreClient` (embedded mode). Errors raise DuckcastError.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence

from prometheus_client import Counter, Histogram

from service.errors import StoreUnavailable
from service.metrics import STORE_LATENCY, STORE_REQUESTS
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.storeclient.protocol import raise_for

# The metrics' children by label values, looked up once: labels() cost more than the
# increment itself, on every store call.
_REQUESTS: dict[tuple[str, str], Counter] = {}
_LATENCY: dict[str, Histogram] = {}


def count_request(op: str, outcome: str) -> None:
    child = _REQUESTS.get((op, outcome))
    if child is None:
        child = _REQUESTS[op, outcome] = STORE_REQUESTS.labels(op, outcome)
    child.inc()


def observe_latency(op: str, seconds: float) -> None:
    _latency(op).observe(seconds)


def _latency(op: str) -> Histogram:
    child = _LATENCY.get(op)
    if child is None:
        child = _LATENCY[op] = STORE_LATENCY.labels(op)
    return child


class StoreClient(abc.ABC):
    """Typed calls over `call(StoreRequest) -> StoreResponse`; errors raise DuckcastError."""

    timeout: float = 5.0

    @abc.abstractmethod
    async def call(self, req: spb.StoreRequest) -> spb.StoreResponse: ...

    async def start(self) -> None:  # noqa: B027 - optional hook
        pass

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass

    async def _ok(self, req: spb.StoreRequest) -> spb.StoreResponse:
        op = req.WhichOneof("op") or "unknown"
        started = time.perf_counter()
        try:
            resp = await self.call(req)
        except StoreUnavailable:
            count_request(op, "unavailable")
            raise
        _latency(op).observe(time.perf_counter() - started)
        if resp.WhichOneof("result") == "error":
            count_request(op, spb.StoreError.Code.Name(resp.error.code).lower())
            raise_for(resp.error)
        count_request(op, "ok")
        return resp

    async def ping(self) -> int:
        return (await self._ok(spb.StoreRequest(ping=spb.Ping()))).pong.seq

    async def create_items(
        self,
        actor_id: int,
        items: Sequence[pb.ItemCreate],
        idempotency_key: str = "",
        request_hash: bytes = b"",
    ) -> pb.ItemList:
        """All or nothing. With an `idempotency_key`, the same (actor, key) within 24 h answers
        the first result again instead of writing (Invalid if `request_hash` differs)."""
        return (await self.create_items_at(actor_id, items, idempotency_key, request_hash))[0]

    async def create_items_at(
        self,
        actor_id: int,
        items: Sequence[pb.ItemCreate],
        idempotency_key: str = "",
        request_hash: bytes = b"",
    ) -> tuple[pb.ItemList, int]:
        """create_items, and a seq at or after the write's events (read-your-writes)."""
        op = create_op(actor_id, items, idempotency_key, request_hash)
        resp = await self._ok(spb.StoreRequest(create_items=op))
        return resp.items, resp.seq

    async def update_item(
        self, actor_id: int, item_id: int, patch: pb.ItemUpdate, if_match: Sequence[int] = ()
    ) -> pb.Item:
        """`if_match`: versions the item must be at (PreconditionFailed otherwise)."""
        return (await self.update_item_at(actor_id, item_id, patch, if_match))[0]

    async def update_item_at(
        self, actor_id: int, item_id: int, patch: pb.ItemUpdate, if_match: Sequence[int] = ()
    ) -> tuple[pb.Item, int]:
        """update_item, and a seq at or after the write's event (read-your-writes)."""
        op = spb.UpdateItem(actor_id=actor_id, item_id=item_id, patch=patch, if_match=if_match)
        resp = await self._ok(spb.StoreRequest(update_item=op))
        return resp.item, resp.seq

    async def delete_item(self, actor_id: int, item_id: int, if_match: Sequence[int] = ()) -> int:
        op = spb.DeleteItem(actor_id=actor_id, item_id=item_id, if_match=if_match)
        return (await self._ok(spb.StoreRequest(delete_item=op))).deleted.seq

    async def get_item(self, item_id: int) -> pb.Item:
        return (await self._ok(spb.StoreRequest(get_item=spb.GetItem(item_id=item_id)))).item

    async def list_items(self, query: spb.ListItems) -> pb.ItemPage:
        return (await self._ok(spb.StoreRequest(list_items=query))).page

    async def stats(self) -> pb.Stats:
        return (await self._ok(spb.StoreRequest(get_stats=spb.GetStats()))).stats

    async def create_user(self, username: str, password_hash: str) -> pb.User:
        op = spb.CreateUser(username=username, password_hash=password_hash)
        return (await self._ok(spb.StoreRequest(create_user=op))).user

    async def get_user(self, user_id: int) -> pb.User:
        req = spb.StoreRequest(get_user=spb.GetUser(user_id=user_id))
        return (await self._ok(req)).user_record.user

    async def get_user_by_name(self, username: str) -> spb.UserRecord:
        req = spb.StoreRequest(get_user_by_name=spb.GetUserByName(username=username))
        return (await self._ok(req)).user_record

    async def events_since(self, after_seq: int, limit: int = 0) -> spb.EventBatch:
        op = spb.EventsSince(after_seq=after_seq, limit=limit)
        return (await self._ok(spb.StoreRequest(events_since=op))).events

    async def revoke_token(self, token_id: str, expires_at: int) -> spb.Revocation:
        op = spb.RevokeToken(token_id=token_id, expires_at=expires_at)
        return (await self._ok(spb.StoreRequest(revoke_token=op))).revoked

    async def revocations_since(self, after_rev: int) -> spb.Revocations:
        op = spb.RevocationsSince(after_rev=after_rev)
        return (await self._ok(spb.StoreRequest(revocations_since=op))).revocations

    async def record_upload(
        self, actor_id: int, name: str, size: int, content_type: str
    ) -> pb.UploadResult:
        op = spb.RecordUpload(actor_id=actor_id, name=name, size=size, content_type=content_type)
        return (await self._ok(spb.StoreRequest(record_upload=op))).upload

    async def delete_upload(self, actor_id: int, name: str) -> None:
        op = spb.DeleteUpload(actor_id=actor_id, name=name)
        await self._ok(spb.StoreRequest(delete_upload=op))


def create_op(
    actor_id: int, items: Sequence[pb.ItemCreate], idempotency_key: str, request_hash: bytes
) -> spb.CreateItems:
    """The store operation of one create_items call (sent alone, or within a CreateMany)."""
    return spb.CreateItems(
        actor_id=actor_id,
        items=items,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
