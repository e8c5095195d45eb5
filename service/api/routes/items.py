"""The item routes. The three hottest (`GET /api/items/{id}`, `GET /api/items`,
`POST /api/items`) each have a lean handler (service.api.routing.LeanRoute) that answers their
well-formed requests without dependency solving, through the same work function (`get`, `page`,
`create_one`) as the declared endpoint, which answers everything else (and is the contract and
the OpenAPI source). Their parameter rules come from service.wire, read by both."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.api.deps import CurrentUser, StoreDep, scope_session, user_id
from service.api.edge import route_path
from service.api.negotiation import (
    JSON,
    accepted,
    body_data,
    documented,
    parse_body,
    render,
    response_type,
    validated,
)
from service.api.params import AsciiInt
from service.api.routing import LeanRoute, lean
from service.api.schemas import (
    BULK_MAX,
    BulkCreate,
    ItemCreate,
    ItemListOut,
    ItemOut,
    ItemPageOut,
    ItemUpdate,
    StatsOut,
    item_create_pb,
    item_update_pb,
    valid_item_create,
)
from service.errors import Invalid
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.realtime.readcache import Cached, CachedItem, ReadCache
from service.storeclient import StoreClient
from service.wire import (
    ID,
    LIMIT,
    LIMIT_DEFAULT,
    PAGE,
    PAGE_DEFAULT,
    QUERY_MAX_LENGTH,
    STATUSES,
    Bounds,
    Status,
    ascii_int,
    bounded_int,
    item_json,
    item_list_json,
    page_json,
    stats_json,
)

router = APIRouter(prefix="/api", tags=["items"], route_class=LeanRoute)

ItemId = Annotated[AsciiInt, Path(ge=ID.low, le=ID.high)]
# The integer query parameters of GET /api/items, by name: what its lean handler accepts.
LIST_INTS: dict[str, Bounds] = {"page": PAGE, "limit": LIMIT, "owner_id": ID}

IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,200}")
ENTITY_TAG = re.compile(r'(W/)?"([^"]*)"')
NO_VERSION = 0  # versions start at 1: a tag that can never match stands for this


def etag(item: pb.Item) -> dict[str, str]:
    return {"ETag": f'"{item.version}"'}


# Read-your-writes across workers: every write answers the store's seq after it, and a read
# presenting it is answered from a worker's read cache only once that cache has reached it.
SEQ_HEADER = "Duckcast-Seq"
SEQ = {
    SEQ_HEADER: "The store's seq after this write. Present it on a read (same header) to get"
    " at least this write back from any worker."
}
WANT_SEQ = {SEQ_HEADER: "A seq from a write's answer: the read reflects at least that write."}


def wrote(request: Request, seq: int) -> dict[str, str]:
    """The answer's SEQ_HEADER for a write at `seq`. This worker's reads then need at least
    that seq (read-your-writes on one worker, with or without the header)."""
    cache: ReadCache | None = request.app.state.read_cache
    if cache is not None:
        cache.wrote(seq)
    return {SEQ_HEADER: str(seq)}


def wanted_seq(request: Request) -> int | None:
    return seq_needed(request.headers.get(SEQ_HEADER))


def seq_needed(value: str | None) -> int | None:
    """The seq a read presented in SEQ_HEADER (`value`, None without one)."""
    if value is None:
        return None
    seq = ascii_int(value)
    if seq is None or seq > ID.high:
        raise Invalid(f"{SEQ_HEADER}: must be a seq, in ASCII digits")
    return seq


class _Encoded(Response):
    """A 200 with a cached body and head: what `Response(body, media_type=..., headers=...)`
    makes (the same headers in the same order), without making the head again per request."""

    def __init__(self, body: bytes, head: list[tuple[bytes, bytes]]) -> None:
        self.status_code = 200
        self.body = body
        self.background = None
        self.raw_headers = list(head)  # a middleware may change the answer's list in place


def _cached(request: Request, entry: Cached) -> Response:
    return _Encoded(*_answer(entry, response_type(request)))


def _answer(entry: Cached, media: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The entry's body in `media` (the negotiated format) and the head of its 200 (an item
    with its ETag). An entry is never changed (an event replaces it), so neither is the head
    made from it: the caller answers with a copy."""
    body = entry.json if media == JSON else entry.proto
    head = entry.heads.get(media)
    if head is None:
        headers = etag(entry.item) if isinstance(entry, CachedItem) else None
        head = Response(body, media_type=media, headers=headers).raw_headers
        entry.heads[media] = head
    return body, head


async def read_item(request: Request, item_id: int, store: StoreClient) -> Response:
    """GET /api/items/{id} (the fast path answers through here too)."""
    cache: ReadCache | None = request.app.state.read_cache
    if cache is None:
        item = await store.get_item(item_id)
        return render(request, item, item_json, headers=etag(item))
    entry = await cache.item(item_id, wanted_seq(request), lambda: store.get_item(item_id))
    return _cached(request, entry)


async def read_page(request: Request, query: spb.ListItems, store: StoreClient) -> Response:
    """GET /api/items (the fast path answers through here too); the unfiltered first page of
    any size may come from the worker's read cache."""
    cache: ReadCache | None = request.app.state.read_cache
    first = query.page == 1 and not (query.HasField("owner_id") or query.HasField("status"))
    if cache is None or not first or query.HasField("q"):
        return render(request, await store.list_items(query), page_json)
    need = wanted_seq(request)
    page = await cache.first_page(query.limit, need, lambda: store.list_items(query))
    return _cached(request, page)


def if_match(request: Request) -> list[int]:
    """The versions `If-Match` accepts; [] without the header or for `*` (any current item).
    Tags compare strongly, as RFC 9110 wants for If-Match: a weak or foreign tag matches no
    version."""
    header = request.headers.get("if-match")
    if header is None or header.strip() == "*":
        return []
    versions = []
    for part in header.split(","):
        tag = ENTITY_TAG.fullmatch(part.strip())
        if tag is None:
            raise Invalid('If-Match: must be * or entity tags such as "3"')
        version = ascii_int(tag[2])
        strong = tag[1] is None and version is not None and str(version) == tag[2]
        versions.append(version if strong and version is not None else NO_VERSION)
    return versions


def idempotency_key(request: Request) -> str:
    key = request.headers.get("idempotency-key")
    if key is None:
        return ""
    if IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise Invalid("Idempotency-Key: must be 1-200 printable ASCII characters")
    return key


async def create(
    request: Request, user: int, store: StoreClient, items: list[pb.ItemCreate], key: str
) -> tuple[pb.ItemList, int]:
    """Create the items; with an Idempotency-Key, once per (user, key) within 24 h. Also
    answers a seq at or after the write (SEQ_HEADER)."""
    if not key:
        return await store.create_items_at(user, items)
    # The same body in JSON or protobuf is the same request; another route is not.
    request_hash = hashlib.sha256(
        route_path(request.scope).encode("utf-8", "surrogateescape")
        + b"\n"
        + pb.BulkCreateRequest(items=items).SerializeToString(deterministic=True)
    ).digest()
    return await store.create_items_at(user, items, key, request_hash)


# -- the work of the three hot routes, for their lean handlers and declared endpoints alike --


async def get(request: Request, store: StoreClient, item_id: int) -> Response:
    """GET /api/items/{item_id}."""
    return await read_item(request, item_id, store)


async def page(request: Request, store: StoreClient, query: spb.ListItems) -> Response:
    """GET /api/items."""
    return await read_page(request, query, store)


async def create_one(request: Request, user: int, store: StoreClient) -> Response:
    """POST /api/items."""
    key = idempotency_key(request)
    data = await body_data(request, pb.ItemCreate)
    body = valid_item_create(data)
    if body is None:  # ItemCreate refuses it (422) or reads it differently
        body = item_create_pb(validated(ItemCreate, data))
    created, seq = await create(request, user, store, [body], key)
    (item,) = created.items
    return render(request, item, item_json, 201, etag(item) | wrote(request, seq))


# -- lean handlers: the well-formed case, or False (nothing read, nothing sent) ---------------


def _store(scope: Scope) -> StoreClient:
    store: StoreClient = scope["app"].state.store
    return store


# What each Accept header asks for (negotiation.accepted), by its raw bytes: clients repeat
# the same few. Short ones only, at most MEDIA_KEPT of them (cleared when full).
MEDIA_KEPT = 64
MEDIA_KEPT_BYTES = 128
_media: dict[bytes, str] = {}


def _media_of(accept: bytes | None) -> str:
    if accept is None:
        return JSON
    media = _media.get(accept)
    if media is None:
        media = accepted(accept.decode("latin-1"))
        if len(accept) <= MEDIA_KEPT_BYTES:
            if len(_media) >= MEDIA_KEPT:
                _media.clear()
            _media[accept] = media
    return media


def _read_headers(scope: Scope) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The first Authorization, Accept and Duckcast-Seq headers (None: absent), as a Request's
    `headers.get()` finds them, in one pass over the list (each get() decodes and scans it)."""
    authorization = accept = seq = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorization is None:
                authorization = value
        elif name == b"accept":
            if accept is None:
                accept = value
        elif name == b"duckcast-seq" and seq is None:
            seq = value
    return authorization, accept, seq


async def _lean_get(scope: Scope, receive: Receive, send: Send) -> bool:
    """GET /api/items/{id} with no Request made: what `get()` answers, the cache's hit sent
    as the same two messages a Response sends."""
    authorization, accept, seq = _read_headers(scope)
    scope_session(scope, authorization)  # first, as the endpoint's CurrentUser: 401 before 422
    item_id = bounded_int(scope["path_params"]["item_id"], ID.low, ID.high)
    if item_id is None:
        return False  # the endpoint explains it (422)
    state = scope["app"].state
    store: StoreClient = state.store
    cache: ReadCache | None = state.read_cache
    if cache is None:
        await (await get(Request(scope, receive), store, item_id))(scope, receive, send)
        return True
    need = seq_needed(None if seq is None else seq.decode("latin-1"))
    entry = cache.hit(item_id, need)
    if entry is None:
        entry = await cache.item(item_id, need, lambda: store.get_item(item_id))
    body, head = _answer(entry, _media_of(accept))
    await send({"type": "http.response.start", "status": 200, "headers": list(head)})
    await send({"type": "http.response.body", "body": body})
    return True


# The lean list handler's reading of a query string, by its raw bytes: clients repeat the same
# few (`limit=20`), and the reading is a pure function of them. Short ones only, and at most
# LIST_QUERIES of them (cleared when full): a client sending endless variants costs a parse each.
# The messages kept are never changed (the store client copies what it sends).
LIST_QUERIES = 256
LIST_QUERY_KEPT_BYTES = 64
_list_queries: dict[bytes, spb.ListItems | None] = {}


def _list_query(request: Request) -> spb.ListItems | None:
    raw: bytes = request.scope["query_string"]
    if raw in _list_queries:
        return _list_queries[raw]
    query = _read_list_query(request)
    if len(raw) <= LIST_QUERY_KEPT_BYTES:
        if len(_list_queries) >= LIST_QUERIES:
            _list_queries.clear()
        _list_queries[raw] = query
    return query


def _read_list_query(request: Request) -> spb.ListItems | None:
    query = spb.ListItems(page=PAGE_DEFAULT, limit=LIMIT_DEFAULT)
    for name, value in request.query_params.multi_items():
        bounds = LIST_INTS.get(name)
        if bounds is not None:
            number = bounded_int(value, bounds.low, bounds.high)
            if number is None:
                return None
            setattr(query, name, number)
        elif name == "status" and value in STATUSES:
            query.status = value
        elif name == "q" and len(value) <= QUERY_MAX_LENGTH:
            query.ClearField("q")  # the last q wins, as for the endpoint; an empty one: no search
            if value:
                query.q = value
        else:
            return None  # unknown or invalid: the endpoint explains it (or ignores it)
    return query


async def _lean_list(scope: Scope, receive: Receive, send: Send) -> bool:
    request = Request(scope, receive)
    user_id(request, allow_query=False)
    query = _list_query(request)
    if query is None:
        return False
    await (await page(request, _store(scope), query))(scope, receive, send)
    return True


async def _lean_create(scope: Scope, receive: Receive, send: Send) -> bool:
    request = Request(scope, receive)
    user = user_id(request, allow_query=False)
    await (await create_one(request, user, _store(scope)))(scope, receive, send)
    return True


# -- routes ---------------------------------------------------------------------------------


SAFE_RETRY = {
    "Idempotency-Key": "1-200 printable ASCII characters. The same key from the same user within"
    " 24 h answers the first answer again (status and body) without a second write; the same"
    " key with a different body answers 422."
}
ETAG = {"ETag": 'The item\'s version, quoted: "3". Send it back in If-Match.'}
IF_MATCH = {"If-Match": 'Change the item only if it is at this version ("3", its ETag).'}
PRECONDITION = {412: "If-Match named a version the item is not at"}


# The hottest route first: the router tries the routes' patterns in declaration order.
@router.get(
    "/items/{item_id}",
    **documented(response_model=ItemOut, request_headers=WANT_SEQ, response_headers=ETAG),
)
@lean(_lean_get)
async def get_item(request: Request, item_id: ItemId, _: CurrentUser, store: StoreDep) -> Response:
    return await get(request, store, item_id)


@router.get("/items", **documented(response_model=ItemPageOut, request_headers=WANT_SEQ))
@lean(_lean_list)
async def list_items(
    request: Request,
    _: CurrentUser,
    store: StoreDep,
    page_: Annotated[AsciiInt, Query(alias="page", ge=PAGE.low, le=PAGE.high)] = PAGE_DEFAULT,
    limit: Annotated[AsciiInt, Query(ge=LIMIT.low, le=LIMIT.high)] = LIMIT_DEFAULT,
    owner_id: Annotated[AsciiInt | None, Query(ge=ID.low, le=ID.high)] = None,
    status: Status | None = None,
    q: Annotated[str | None, Query(max_length=QUERY_MAX_LENGTH)] = None,
) -> Response:
    query = spb.ListItems(page=page_, limit=limit)
    if owner_id is not None:
        query.owner_id = owner_id
    if status is not None:
        query.status = status
    if q:
        query.q = q
    return await page(request, store, query)


@router.post(
    "/items",
    **documented(ItemCreate, ItemOut, 201, request_headers=SAFE_RETRY, response_headers=ETAG | SEQ),
)
@lean(_lean_create)
async def create_item(request: Request, user: CurrentUser, store: StoreDep) -> Response:
    return await create_one(request, user, store)


@router.post(
    "/items/bulk",
    **documented(BulkCreate, ItemListOut, 201, request_headers=SAFE_RETRY, response_headers=SEQ),
)
async def bulk_create(request: Request, user: CurrentUser, store: StoreDep) -> Response:
    key = idempotency_key(request)
    body = await parse_body(request, BulkCreate, pb.BulkCreateRequest, max_items=BULK_MAX)
    items = [item_create_pb(c) for c in body.items]
    created, seq = await create(request, user, store, items, key)
    return render(request, created, item_list_json, 201, wrote(request, seq))


async def _update(request: Request, item_id: int, user: int, store: StoreDep) -> Response:
    versions = if_match(request)
    body = await parse_body(request, ItemUpdate, pb.ItemUpdate)
    item, seq = await store.update_item_at(user, item_id, item_update_pb(body), versions)
    return render(request, item, item_json, headers=etag(item) | wrote(request, seq))


@router.put(
    "/items/{item_id}",
    **documented(
        ItemUpdate,
        ItemOut,
        request_headers=IF_MATCH,
        response_headers=ETAG | SEQ,
        errors=PRECONDITION,
    ),
)
async def put_item(
    request: Request, item_id: ItemId, user: CurrentUser, store: StoreDep
) -> Response:
    return await _update(request, item_id, user, store)


@router.patch(
    "/items/{item_id}",
    **documented(
        ItemUpdate,
        ItemOut,
        request_headers=IF_MATCH,
        response_headers=ETAG | SEQ,
        errors=PRECONDITION,
    ),
)
async def patch_item(
    request: Request, item_id: ItemId, user: CurrentUser, store: StoreDep
) -> Response:
    return await _update(request, item_id, user, store)


@router.delete(
    "/items/{item_id}",
    **documented(status=204, request_headers=IF_MATCH, response_headers=SEQ, errors=PRECONDITION),
)
async def delete_item(
    request: Request, item_id: ItemId, user: CurrentUser, store: StoreDep
) -> Response:
    seq = await store.delete_item(user, item_id, if_match(request))
    return Response(status_code=204, headers=wrote(request, seq))


@router.get("/stats", **documented(response_model=StatsOut))
async def stats(request: Request, _: CurrentUser, store: StoreDep) -> Response:
    return render(request, await store.stats(), stats_json)
