"""Conversions between DuckDB rows, protobuf messages and Arrow tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from service.pb import duckcast_pb2 as pb
from service.wire import set_us, to_us

ItemRow = tuple[int, str, str, str, int, int, int, int, int]

ITEM_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("status", pa.string()),
        ("priority", pa.int32()),
        ("owner_id", pa.int64()),
        ("created_us", pa.int64()),
        ("updated_us", pa.int64()),
        ("version", pa.int64()),
    ]
)
EVENT_SCHEMA = pa.schema([("seq", pa.int64()), ("payload", pa.binary())])
IDEMPOTENCY_SCHEMA = pa.schema(
    [
        ("owner_id", pa.int64()),
        ("key", pa.string()),
        ("request_hash", pa.binary()),
        ("result", pa.binary()),
        ("created_us", pa.int64()),
    ]
)
USER_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("username", pa.string()),
        ("password_hash", pa.string()),
        ("created_us", pa.int64()),
    ]
)


def item_from_row(row: Sequence[Any]) -> pb.Item:
    item = pb.Item(
        id=row[0],
        title=row[1],
        description=row[2],
        status=row[3],
        priority=row[4],
        owner_id=row[5],
        version=row[8],
    )
    set_us(item.created_at, row[6])
    set_us(item.updated_at, row[7])
    return item


def items_table(items: Iterable[pb.Item]) -> pa.Table:
    cols: list[list[Any]] = [[] for _ in range(9)]
    for it in items:
        cols[0].append(it.id)
        cols[1].append(it.title)
        cols[2].append(it.description)
        cols[3].append(it.status)
        cols[4].append(it.priority)
        cols[5].append(it.owner_id)
        cols[6].append(to_us(it.created_at))
        cols[7].append(to_us(it.updated_at))
        cols[8].append(it.version)
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(cols, ITEM_SCHEMA, strict=True)],
        schema=ITEM_SCHEMA,
    )


def events_table(events: Sequence[pb.DomainEvent]) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array([e.seq for e in events], type=pa.int64()),
            pa.array([e.SerializeToString() for e in events], type=pa.binary()),
        ],
        schema=EVENT_SCHEMA,
    )


def _columns(rows: Sequence[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(cols, schema, strict=True)], schema=schema
    )


def users_table(rows: Sequence[tuple[int, str, str, int]]) -> pa.Table:
    return _columns(rows, USER_SCHEMA)


def idempotency_table(rows: Sequence[tuple[int, str, bytes, bytes, int]]) -> pa.Table:
    return _columns(rows, IDEMPOTENCY_SCHEMA)


def user_from_row(row: Sequence[Any]) -> pb.User:
    user = pb.User(id=row[0], username=row[1])
    set_us(user.created_at, row[2])
    return user
