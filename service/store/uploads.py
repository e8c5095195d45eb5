"""Upload records: who owns each stored file, checked against per-user limits in the writer.

The store decides (one writer, so two workers cannot both squeeze under a quota); the worker
writes or deletes the file itself only after the store agreed (the store may not share the
uploads volume: in compose it does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from service.errors import Forbidden, NotFound, PayloadTooLarge, TooManyRequests
from service.pb import duckcast_pb2 as pb
from service.pb import store_pb2 as spb

RATE_WINDOW_US = 60_000_000


@dataclass(frozen=True, slots=True)
class UploadLimits:
    quota_bytes: int = 256 * 1024 * 1024  # per user, all uploads together
    per_minute: int = 30  # per user


def record_upload(
    con: duckdb.DuckDBPyConnection, op: spb.RecordUpload, now_us: int, limits: UploadLimits
) -> pb.UploadResult:
    row = con.execute(
        "SELECT coalesce(sum(size), 0), count(*) FILTER (WHERE created_us > ?) "
        "FROM uploads WHERE owner_id = ?",
        [now_us - RATE_WINDOW_US, op.actor_id],
    ).fetchone()
    used, recent = (int(row[0]), int(row[1])) if row else (0, 0)
    if recent >= limits.per_minute:
        raise TooManyRequests(f"upload rate: at most {limits.per_minute} uploads a minute")
    if used + op.size > limits.quota_bytes:
        raise PayloadTooLarge(
            f"file: the upload quota is {limits.quota_bytes} bytes per user ({used} used)"
        )
    con.execute(
        "INSERT INTO uploads VALUES (?, ?, ?, ?, ?)",
        [op.name, op.actor_id, op.size, op.content_type, now_us],
    )
    return pb.UploadResult(
        filename=op.name, url=f"/uploads/{op.name}", size=op.size, content_type=op.content_type
    )


def delete_upload(con: duckdb.DuckDBPyConnection, op: spb.DeleteUpload) -> spb.Deleted:
    row = con.execute("SELECT owner_id FROM uploads WHERE name = ?", [op.name]).fetchone()
    if row is None:
        raise NotFound("no such upload")
    if int(row[0]) != op.actor_id:
        raise Forbidden("the upload belongs to another user")
    con.execute("DELETE FROM uploads WHERE name = ?", [op.name])
    return spb.Deleted()
