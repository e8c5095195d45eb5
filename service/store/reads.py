"""Reads on cursors of their own: a thread pool (DuckDB releases the GIL while it executes),
point reads batched into one `IN` query, and list pages cached until the next commit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import duckdb

from service.pb import duckcast_pb2 as pb
from service.store.cache import ItemCache, PageCache, PageKey
from service.store.rows import item_from_row, user_from_row
from service.store.schema import ITEM_COLUMNS

T = TypeVar("T")
MAX_POINT_BATCH = 500


class ReadPool:
    """Each thread gets its own cursor: DuckDB 2.0 refuses a connection shared by threads."""

    def __init__(self, con: duckdb.DuckDBPyConnection, threads: int) -> None:
        self._con = con
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="duckcast-read")

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._con.cursor()
        return cur

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._cursor()))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class PointReader:
    """Point reads: cache first; misses that arrive while a query runs share the next query."""

    def __init__(self, pool: ReadPool, cache: ItemCache) -> None:
        self._pool = pool
        self._cache = cache
        self._pending: dict[int, list[asyncio.Future[pb.Item | None]]] = {}
        self._flushing = False

    async def get(self, item_id: int) -> pb.Item | None:
        hit, item = self._cache.lookup(item_id)
        if hit:
            return item
        future: asyncio.Future[pb.Item | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(item_id, []).append(future)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                ids = list(self._pending)[:MAX_POINT_BATCH]
                waiting = {i: self._pending.pop(i) for i in ids}
                epoch = self._cache.epoch
                try:
                    found = await self._pool.run(partial(_select_items, ids=ids))
                except Exception as exc:
                    for futures in waiting.values():
                        for f in futures:
                            if not f.done():
                                f.set_exception(exc)
                    continue
                self._cache.fill(epoch, ((i, found.get(i)) for i in ids))
                for i, futures in waiting.items():
                    for f in futures:
                        if not f.done():
                            f.set_result(found.get(i))
        finally:
            self._flushing = False


def _select_items(cur: duckdb.DuckDBPyConnection, *, ids: list[int]) -> dict[int, pb.Item]:
    rows = cur.execute(
        f"SELECT {ITEM_COLUMNS} FROM items WHERE id IN (SELECT unnest(?))", [ids]
    ).fetchall()
    return {r[0]: item_from_row(r) for r in rows}


class PageReader:
    def __init__(self, pool: ReadPool, cache: PageCache) -> None:
        self._pool = pool
        self._cache = cache

    async def get(self, key: PageKey) -> pb.ItemPage:
        hit, page = self._cache.lookup(key)
        if hit and page is not None:
            return page
        epoch = self._cache.epoch
        page = await self._pool.run(lambda cur: _select_page(cur, key))
        self._cache.fill(epoch, [(key, page)])
        return page


def _select_page(cur: duckdb.DuckDBPyConnection, key: PageKey) -> pb.ItemPage:
    page_no, limit, owner_id, status, q = key
    where: list[str] = []
    args: list[object] = []
    if owner_id is not None:
        where.append("owner_id = ?")
        args.append(owner_id)
    if status is not None:
        where.append("status = ?")
        args.append(status)
    if q:
        where.append("contains(lower(title), lower(?))")
        args.append(q)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    # One transaction: the rows, the count and the seq come from the same snapshot.
    cur.execute("BEGIN TRANSACTION")
    try:
        rows = cur.execute(
            f"SELECT {ITEM_COLUMNS} FROM items {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*args, limit, (page_no - 1) * limit],
        ).fetchall()
        counted = cur.execute(
            f"SELECT count(*), (SELECT coalesce(max(seq), 0) FROM events) FROM items {clause}",
            args,
        ).fetchone()
    finally:
        cur.execute("COMMIT")
    total, seq = (int(counted[0]), int(counted[1])) if counted else (0, 0)
    page = pb.ItemPage(total=total, page=page_no, limit=limit, pages=-(-total // limit), seq=seq)
    page.items.extend(item_from_row(r) for r in rows)
    return page


def select_user(
    cur: duckdb.DuckDBPyConnection, *, user_id: int | None = None, username: str | None = None
) -> tuple[pb.User, str] | None:
    column, value = ("id", user_id) if user_id is not None else ("username", username)
    row = cur.execute(
        f"SELECT id, username, created_us, password_hash FROM users WHERE {column} = ?",
        [value],
    ).fetchone()
    return (user_from_row(row), str(row[3])) if row else None


def select_events(cur: duckdb.DuckDBPyConnection, after: int, limit: int) -> list[bytes]:
    rows = cur.execute(
        "SELECT payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?", [after, limit]
    ).fetchall()
    return [bytes(r[0]) for r in rows]


def select_last_seq(cur: duckdb.DuckDBPyConnection) -> int:
    row = cur.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
    return int(row[0]) if row else 0
