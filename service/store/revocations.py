"""Revoked session tokens, as the store keeps them: a table (durable) and an in-memory list
ordered by `rev` (what workers poll, answered without touching DuckDB).

A revocation is a write like any other: it goes through the single writer, gets the next
`rev` in its transaction, and joins the list only after COMMIT. Workers ask for everything
after the last `rev` they saw; entries whose token has expired are dropped on both sides,
since an expired token is refused by its expiry alone.
"""

from __future__ import annotations

import threading
import time

import duckdb

from service.pb import store_pb2 as spb

PRUNE_INTERVAL = 60.0  # seconds


class RevocationLog:
    def __init__(self) -> None:
        self._entries: list[spb.Revocation] = []
        self._lock = threading.Lock()  # appended by the writer thread, read by the loop
        self._pruned_at = 0.0
        self.last_rev = 0

    def load(self, con: duckdb.DuckDBPyConnection) -> None:
        rows = con.execute(
            "SELECT token_id, expires_at, rev FROM revoked_tokens WHERE expires_at > ? "
            "ORDER BY rev",
            [int(time.time())],
        ).fetchall()
        last = con.execute("SELECT coalesce(max(rev), 0) FROM revoked_tokens").fetchone()
        self._entries = [spb.Revocation(token_id=t, expires_at=e, rev=r) for t, e, r in rows]
        self.last_rev = int(last[0]) if last else 0

    def committed(self, entries: list[spb.Revocation]) -> None:
        with self._lock:
            self._entries.extend(entries)
            self.last_rev = max(self.last_rev, entries[-1].rev)

    def since(self, after: int) -> spb.Revocations:
        now = time.time()
        with self._lock:
            if now - self._pruned_at > PRUNE_INTERVAL:
                self._entries = [e for e in self._entries if e.expires_at > now]
                self._pruned_at = now
            answer = spb.Revocations(last_rev=self.last_rev)
            if after > self.last_rev:
                answer.reset = True  # the worker knew a newer store: send it everything
                after = 0
            # Usually nothing is new: look from the end, where the newest entries are.
            start = len(self._entries)
            while start > 0 and self._entries[start - 1].rev > after:
                start -= 1
            answer.revocations.extend(self._entries[start:])
        return answer


def insert(con: duckdb.DuckDBPyConnection, entries: list[spb.Revocation]) -> None:
    con.executemany(
        "INSERT INTO revoked_tokens VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [[e.token_id, e.expires_at, e.rev] for e in entries],
    )


def prune(con: duckdb.DuckDBPyConnection) -> None:
    """Drop revocations of expired tokens (the writer's idle step)."""
    con.execute("DELETE FROM revoked_tokens WHERE expires_at <= ?", [int(time.time())])
