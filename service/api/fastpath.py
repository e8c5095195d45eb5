"""The three hottest requests, served without FastAPI's routing and dependency machinery.

`GET /api/items/{id}`, `GET /api/items` and `POST /api/items` are most of a realtime CRUD
service's traffic, and FastAPI spends more CPU per request routing, solving dependencies and
wrapping `send` than the store round trip costs. This module answers the *well-formed* cases
of those three with the same helpers the routes use (auth, negotiation, body parsing, error
rendering, metrics). Anything it does not fully recognise (a bad query parameter, a missing
token, an odd header) returns False untouched, and FastAPI answers it: the routes in
service.api.routes.items stay the contract and the OpenAPI source, and every error answer
still comes from one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.api.deps import user_id
from service.api.errors import error_response
from service.api.observe import ROUTE_KEY
from service.api.routes.items import create_one, read_item, read_page
from service.errors import DuckcastError
from service.pb import store_pb2 as spb
from service.storeclient import StoreClient
from service.wire import INT64_MAX, STATUSES, ascii_int, bounded_int

ITEM_ROUTE = "/api/items/{item_id}"
ITEMS_ROUTE = "/api/items"
LIST_PARAMS = {"page": (1, 1_000_000), "limit": (1, 100), "owner_id": (1, INT64_MAX)}


def _list_query(request: Request) -> spb.ListItems | None:
    query = spb.ListItems(page=1, limit=20)
    for name, value in request.query_params.multi_items():
        if name in LIST_PARAMS:
            number = bounded_int(value, *LIST_PARAMS[name])
            if number is None:
                return None
            setattr(query, name, number)
        elif name == "status" and value in STATUSES:
            query.status = value
        elif name == "q" and len(value) <= 200:
            if value:
                query.q = value
        else:
            return None  # unknown or invalid: FastAPI explains it (or ignores it)
    return query


async def _answer(request: Request, send: Send, route: str, work: Callable[[], Any]) -> None:
    request.scope[ROUTE_KEY] = route  # for the request observer's metrics and access log
    try:
        response: Response = await work()
    except DuckcastError as exc:
        response = error_response(request, exc)
    await response(request.scope, request.receive, send)


async def serve(scope: Scope, receive: Receive, send: Send) -> bool:
    """Answer the request if it is one of the fast cases; False (nothing sent, nothing read)
    if FastAPI should."""
    path: str = scope["path"]
    if not path.startswith("/api/items"):
        return False
    method: str = scope["method"]
    request = Request(scope, receive)
    state = scope["app"].state
    try:
        user = user_id(request, allow_query=False)
    except DuckcastError:
        return False  # FastAPI answers 401 (and 404/405 for paths it does not know)
    store: StoreClient = state.store

    if method == "GET" and path.startswith("/api/items/"):
        item_id = bounded_int(path[len("/api/items/") :], 1, INT64_MAX)
        if item_id is None:
            return False

        await _answer(request, send, ITEM_ROUTE, lambda: read_item(request, item_id, store))
        return True

    if path != ITEMS_ROUTE:
        return False
    if method == "GET":
        query = _list_query(request)
        if query is None:
            return False

        await _answer(request, send, ITEMS_ROUTE, lambda: read_page(request, query, store))
        return True

    if method == "POST":
        declared = ascii_int(request.headers.get("content-length"))
        limit: int = state.settings.max_body_bytes
        if declared is None or declared > limit:
            return False  # chunked or oversize: the BodyLimit middleware's job

        await _answer(request, send, ITEMS_ROUTE, lambda: create_one(request, user, store))
        return True
    return False
