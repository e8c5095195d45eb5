from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from starlette.requests import Request
from starlette.responses import Response

from service.api.deps import CurrentUser, StoreDep
from service.api.negotiation import documented, parse_body, render
from service.api.schemas import (
    BulkCreate,
    ItemCreate,
    ItemListOut,
    ItemOut,
    ItemPageOut,
    ItemUpdate,
    StatsOut,
    item_create_pb,
    item_update_pb,
)
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.wire import INT64_MAX, item_json, item_list_json, page_json, stats_json

router = APIRouter(prefix="/api", tags=["items"])

ItemId = Annotated[int, Path(ge=1, le=INT64_MAX)]


@router.get("/items", **documented(response_model=ItemPageOut))
async def list_items(
    request: Request,
    _: CurrentUser,
    store: StoreDep,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    owner_id: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
    status: Literal["active", "completed"] | None = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    query = spb.ListItems(page=page, limit=limit)
    if owner_id is not None:
        query.owner_id = owner_id
    if status is not None:
        query.status = status
    if q:
        query.q = q
    return render(request, await store.list_items(query), page_json)


@router.post("/items", **documented(ItemCreate, ItemOut, 201))
async def create_item(request: Request, user: CurrentUser, store: StoreDep) -> Response:
    body = await parse_body(request, ItemCreate, pb.ItemCreate)
    created = await store.create_items(user, [item_create_pb(body)])
    return render(request, created.items[0], item_json, 201)


@router.post("/items/bulk", **documented(BulkCreate, ItemListOut, 201))
async def bulk_create(request: Request, user: CurrentUser, store: StoreDep) -> Response:
    body = await parse_body(request, BulkCreate, pb.BulkCreateRequest)
    created = await store.create_items(user, [item_create_pb(c) for c in body.items])
    return render(request, created, item_list_json, 201)


@router.get("/items/{item_id}", **documented(response_model=ItemOut))
async def get_item(request: Request, item_id: ItemId, _: CurrentUser, store: StoreDep) -> Response:
    return render(request, await store.get_item(item_id), item_json)


async def _update(request: Request, item_id: int, user: int, store: StoreDep) -> Response:
    body = await parse_body(request, ItemUpdate, pb.ItemUpdate)
    return render(request, await store.update_item(user, item_id, item_update_pb(body)), item_json)


@router.put("/items/{item_id}", **documented(ItemUpdate, ItemOut))
async def put_item(
    request: Request, item_id: ItemId, user: CurrentUser, store: StoreDep
) -> Response:
    return await _update(request, item_id, user, store)


@router.patch("/items/{item_id}", **documented(ItemUpdate, ItemOut))
async def patch_item(
    request: Request, item_id: ItemId, user: CurrentUser, store: StoreDep
) -> Response:
    return await _update(request, item_id, user, store)


@router.delete("/items/{item_id}", status_code=204)
async def delete_item(item_id: ItemId, user: CurrentUser, store: StoreDep) -> Response:
    await store.delete_item(user, item_id)
    return Response(status_code=204)


@router.get("/stats", **documented(response_model=StatsOut))
async def stats(request: Request, _: CurrentUser, store: StoreDep) -> Response:
    return render(request, await store.stats(), stats_json)
