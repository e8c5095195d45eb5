"""The store engine: owns the DuckDB file, the single writer, the readers and the event log.

`handle(StoreRequest) -> StoreResponse` is the one entry point; the socket server and the
in-process client both call it, so embedded and multi-process modes run the same code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

from service import errors
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb
from service.store import revocations
from service.store.batch import (
    Counters,
    StoreState,
    WriteOp,
    WritePlan,
    apply_batch,
    check_fields,
    purge_expired_keys,
)
from service.store.cache import ItemCache, PageCache, item_cache, page_cache
from service.store.reads import (
    PageReader,
    PointReader,
    ReadPool,
    select_events,
    select_last_seq,
    select_user,
)
from service.store.schema import migrate
from service.store.uploads import UploadLimits
from service.store.writer import GroupCommitWriter
from service.storeclient.protocol import UNKNOWN_OPERATION, error_code

logger = logging.getLogger(__name__)

KEY_PURGE_INTERVAL_US = 3600 * 1_000_000
RECENT_EVENTS = 10_000  # served from memory to resuming subscribers and gap repair
MAX_EVENTS_PER_CALL = 5_000
# Item ids are reserved in blocks: id_counters is written when a batch passes the reservation,
# not by every batch (the UPDATE was ~a fifth of a small batch's DuckDB time). After a crash
# the ids issued next skip what was left of the block; a clean close stores the exact counter.
ITEM_ID_BLOCK = 10_000
EventListener = Callable[[list[pb.DomainEvent]], None]
# Write ops (through the single writer) and the StoreResponse field of their result.
WRITES = {
    "create_items": "items",
    "update_item": "item",
    "delete_item": "deleted",
    "create_user": "user",
    "revoke_token": "revoked",
    "record_upload": "upload",
    "delete_upload": "upload_deleted",
}


class StoreEngine:
    def __init__(
        self,
        path: Path,
        *,
        read_threads: int = 4,
        duckdb_threads: int | None = None,
        item_cache_bytes: int = 64 * 1024 * 1024,
        miss_cache_entries: int = 10_000,
        page_cache_bytes: int = 16 * 1024 * 1024,
        commit_window: float = 0.0,
        max_batch: int = 2000,
        event_retention: int = 100_000,
        upload_limits: UploadLimits = UploadLimits(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._upload_limits = upload_limits
        self.revocations = revocations.RevocationLog()
        self._read_threads = read_threads
        self._duckdb_threads = duckdb_threads
        self._item_cache: ItemCache = item_cache(item_cache_bytes, miss_cache_entries)
        self._page_cache: PageCache = page_cache(page_cache_bytes)
        self._commit_window = commit_window
        self._max_batch = max_batch
        self._retention = event_retention
        self._clock = clock
        self._recent: deque[pb.DomainEvent] = deque(maxlen=RECENT_EVENTS)
        self._recent_lock = threading.Lock()
        self._listeners: list[EventListener] = []
        self._batch_observers: list[Callable[[int, float], None]] = []
        self.state = StoreState()
        self._keys_purged_us = 0
        self._con: duckdb.DuckDBPyConnection | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def open(self) -> None:
        private_dir(self.path.parent)
        # Checkpoint ourselves when idle; the automatic one slows as the indexes grow.
        config: dict[str, str | bool | int | float | list[str]] = {"checkpoint_threshold": "256MB"}
        if self._duckdb_threads is not None:  # None: DuckDB's default, one per core
            config["threads"] = self._duckdb_threads
        con = duckdb.connect(str(self.path), config=config)
        self.path.chmod(0o600)  # password hashes: the owner only, whatever the umask
        migrate(con)
        self.state = _load_state(con)
        self.revocations.load(con)
        self.state.last_rev = self.revocations.last_rev
        self._con = con
        self._writer: GroupCommitWriter[WriteOp] = GroupCommitWriter(
            con.cursor(),
            self._apply,
            window=self._commit_window,
            max_batch=self._max_batch,
            on_idle=_idle,
            on_batch=self._observe_batch,
            clock=self._clock,
        )
        self._writer.start()
        self._pool = ReadPool(con, self._read_threads)
        self._points = PointReader(self._pool, self._item_cache)
        self._pages = PageReader(self._pool, self._page_cache)

    def close(self) -> None:
        """Drain queued writes in order, then close the database (blocking)."""
        if self._con is None:
            return
        self._writer.close()
        self._pool.close()
        # Every write is in: give back the unused part of the id reservation.
        self._con.execute("UPDATE id_counters SET next_item_id = ?", [self.state.next_item_id])
        self._con.execute("CHECKPOINT")
        self._con.close()
        self._con = None

    def add_listener(self, listener: EventListener) -> None:
        """Called from the writer thread with each committed batch's events, in seq order."""
        self._listeners.append(listener)

    def add_batch_observer(self, observer: Callable[[int, float], None]) -> None:
        self._batch_observers.append(observer)

    # -- the writer's side ------------------------------------------------------------------

    def _apply(self, con: duckdb.DuckDBPyConnection, ops: Sequence[WriteOp]) -> WritePlan:
        now_us = int(self._clock() * 1_000_000)
        if now_us - self._keys_purged_us > KEY_PURGE_INTERVAL_US:
            # expired keys are already ignored by lookups; this only reclaims their rows
            purge_expired_keys(con, now_us)
            self._keys_purged_us = now_us
        plan = apply_batch(
            con, ops, self.state, self._item_cache, now_us, self._committed, self._upload_limits
        )
        st = plan.state
        if st.next_item_id > st.reserved_item_id or st.next_user_id != self.state.next_user_id:
            # User ids are exact (a token's user "exists" iff its id < next_user_id).
            if st.next_item_id > st.reserved_item_id:
                st.reserved_item_id = st.next_item_id + ITEM_ID_BLOCK
            con.execute(
                "UPDATE id_counters SET next_item_id = ?, next_user_id = ?",
                [st.reserved_item_id, st.next_user_id],
            )
        slack = max(100, self._retention // 10)
        if st.last_seq - st.first_seq + 1 > self._retention + slack:
            st.first_seq = st.last_seq - self._retention + 1
            con.execute("DELETE FROM events WHERE seq < ?", [st.first_seq])
        return plan

    def _committed(self, plan: WritePlan) -> None:
        self.state = plan.state
        if plan.touched:
            self._item_cache.commit(plan.touched.items())
            self._page_cache.commit((), clear=True)
        if plan.revocations:
            self.revocations.committed(plan.revocations)
        if plan.events:
            with self._recent_lock:
                self._recent.extend(plan.events)
            for listener in self._listeners:
                try:
                    listener(plan.events)
                except Exception:
                    logger.exception("event listener failed")

    def _observe_batch(self, size: int, seconds: float) -> None:
        for observer in self._batch_observers:
            observer(size, seconds)

    # -- requests -----------------------------------------------------------------------------

    async def handle(
        self, req: spb.StoreRequest, committing: Callable[[], bool] | None = None
    ) -> spb.StoreResponse:
        """Answer one request. For a write, `committing` runs (on this loop) right before the
        COMMIT that may apply it; a write is never applied after `req.deadline_us`."""
        resp = spb.StoreResponse(id=req.id)
        deadline = req.deadline_us / 1_000_000 if req.deadline_us else None
        try:
            await self._dispatch(req, resp, deadline, committing)
        except errors.DuckcastError as exc:
            resp.ClearField("result")
            resp.error.code = error_code(exc)
            resp.error.message = exc.message
        except Exception:
            logger.exception("store request %s failed", req.WhichOneof("op"))
            resp.error.code = spb.StoreError.INTERNAL
            resp.error.message = "internal store error"
        return resp

    async def _dispatch(
        self,
        req: spb.StoreRequest,
        resp: spb.StoreResponse,
        deadline: float | None,
        committing: Callable[[], bool] | None,
    ) -> None:
        kind = req.WhichOneof("op")
        if kind == "get_item":
            item = await self._points.get(req.get_item.item_id)
            if item is None:
                raise errors.NotFound(f"item {req.get_item.item_id} not found")
            resp.item.CopyFrom(item)
        elif kind == "list_items":
            resp.page.CopyFrom(await self._list(req.list_items))
        elif kind == "get_stats":
            resp.stats.CopyFrom(self.state.counters.stats())
        elif kind in WRITES:
            result = await self._writer.submit(getattr(req, kind), deadline, committing)
            getattr(resp, WRITES[kind]).CopyFrom(result)
            resp.seq = self.state.last_seq  # set at commit, before the writer answered
        elif kind == "create_many":
            await self._create_many(req.create_many.creates, resp, deadline, committing)
        elif kind == "revocations_since":
            resp.revocations.CopyFrom(self.revocations.since(req.revocations_since.after_rev))
        elif kind in ("get_user", "get_user_by_name"):
            if kind == "get_user":
                uid = req.get_user.user_id
                found = await self._pool.run(lambda cur: select_user(cur, user_id=uid))
            else:
                name = req.get_user_by_name.username
                found = await self._pool.run(lambda cur: select_user(cur, username=name))
            if found is None:
                raise errors.NotFound("user not found")
            resp.user_record.user.CopyFrom(found[0])
            resp.user_record.password_hash = found[1]
        elif kind == "events_since":
            resp.events.CopyFrom(
                await self.events_since(
                    req.events_since.after_seq, req.events_since.limit or MAX_EVENTS_PER_CALL
                )
            )
        elif kind == "ping":
            if not self._writer.alive:
                raise errors.StoreUnavailable("the store's writer thread has stopped")
            resp.pong.seq = self.state.last_seq
        else:
            raise errors.Invalid(f"{UNKNOWN_OPERATION} {kind!r}")

    async def _create_many(
        self,
        creates: Sequence[spb.CreateItems],
        resp: spb.StoreResponse,
        deadline: float | None,
        committing: Callable[[], bool] | None,
    ) -> None:
        """Each create a write of its own; one answer per create, as create_items answers."""
        results = await self._writer.submit_many(creates, deadline, committing)
        seq = self.state.last_seq  # at or after every one of these writes
        answers = resp.created_many.answers
        for result in results:
            answer = answers.add()
            if isinstance(result, errors.DuckcastError):
                answer.error.code = error_code(result)
                answer.error.message = result.message
            elif isinstance(result, BaseException):
                raise result
            else:
                assert isinstance(result, pb.ItemList)
                answer.items.CopyFrom(result)
                answer.seq = seq

    async def _list(self, q: spb.ListItems) -> pb.ItemPage:
        if q.HasField("status"):
            check_fields(None, None, q.status, None)
        key = (
            max(q.page, 1),
            min(max(q.limit, 1), 100),
            q.owner_id if q.HasField("owner_id") else None,
            q.status if q.HasField("status") else None,
            q.q if q.HasField("q") and q.q else None,
        )
        return await self._pages.get(key)

    async def events_since(self, after: int, limit: int) -> spb.EventBatch:
        """Committed events with seq > after, oldest first; `reset` if some were trimmed."""
        limit = min(max(limit, 1), MAX_EVENTS_PER_CALL)
        st = self.state
        batch = spb.EventBatch(last_seq=st.last_seq)
        if after > st.last_seq:
            # A reader (a list page's seq) can see a commit before the writer's bookkeeping
            # for it has run: ask the log itself before calling `after` a seq never issued.
            visible = await self._pool.run(select_last_seq)
            if after > visible:
                batch.reset = True
                return batch
            batch.last_seq = visible
        elif after < st.first_seq - 1:
            batch.reset = True
            return batch
        else:
            with self._recent_lock:
                oldest = self._recent[0].seq if self._recent else st.last_seq + 1
                if after >= oldest - 1:
                    start = after - oldest + 1
                    stop = min(len(self._recent), start + limit)
                    batch.events.extend(self._recent[i] for i in range(start, stop))
                    return batch
        payloads = await self._pool.run(lambda cur: select_events(cur, after, limit))
        for payload in payloads:
            batch.events.add().ParseFromString(payload)
        return batch


def _load_state(con: duckdb.DuckDBPyConnection) -> StoreState:
    ids = con.execute("SELECT next_item_id, next_user_id FROM id_counters").fetchone()
    seqs = con.execute("SELECT min(seq), max(seq) FROM events").fetchone()
    agg = con.execute(
        "SELECT count(*), count(*) FILTER (status = 'active'), coalesce(sum(priority), 0) "
        "FROM items"
    ).fetchone()
    assert ids is not None and seqs is not None and agg is not None
    last = int(seqs[1] or 0)
    return StoreState(
        next_item_id=int(ids[0]),
        reserved_item_id=int(ids[0]),
        next_user_id=int(ids[1]),
        last_seq=last,
        first_seq=int(seqs[0]) if seqs[0] is not None else last + 1,
        counters=Counters(int(agg[0]), int(agg[1]), int(agg[2])),
    )


def private_dir(path: Path) -> None:
    """Create `path` for the owner only, and take group/other access from an existing one:
    it holds the database (password hashes), the secret key and the store's socket."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        try:
            path.chmod(0o700)
        except PermissionError:
            logger.warning("%s is readable by others and not ours to change", path)


def _idle(con: duckdb.DuckDBPyConnection) -> None:
    revocations.prune(con)
    _checkpoint(con)


def _checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("CHECKPOINT")
    except duckdb.TransactionException as exc:
        # A reader's transaction is open; the next quiet moment will do.
        logger.debug("checkpoint skipped: %s", exc)
