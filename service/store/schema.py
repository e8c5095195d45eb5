"""Versioned schema migrations, applied in order at store start.

Timestamps are stored as integer microseconds since the epoch (UTC): exact, cheap to convert
to protobuf Timestamps, and `make_timestamp(created_us)` gives a TIMESTAMP for analytics.
`events` has no PRIMARY KEY on purpose: seq is assigned by the single writer and only grows,
so zonemaps prune range scans, and an ART index would slow every checkpoint as the log grows.
"""

from __future__ import annotations

import duckdb

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE users (
            id BIGINT PRIMARY KEY,
            username VARCHAR NOT NULL UNIQUE,
            password_hash VARCHAR NOT NULL,
            created_us BIGINT NOT NULL
        );
        CREATE TABLE items (
            id BIGINT PRIMARY KEY,
            title VARCHAR NOT NULL,
            description VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            priority INTEGER NOT NULL,
            owner_id BIGINT NOT NULL,
            created_us BIGINT NOT NULL,
            updated_us BIGINT NOT NULL,
            version BIGINT NOT NULL
        );
        CREATE TABLE events (
            seq BIGINT NOT NULL,
            payload BLOB NOT NULL
        );
        -- ids are never reused, even after the newest item is deleted and the store restarts
        CREATE TABLE id_counters (next_item_id BIGINT NOT NULL, next_user_id BIGINT NOT NULL);
        INSERT INTO id_counters VALUES (1, 1);
        """,
    ),
    (
        2,
        """
        -- Tokens ended before their expiry (logout); every worker polls for new ones by rev.
        CREATE TABLE revoked_tokens (
            token_id VARCHAR PRIMARY KEY,
            expires_at BIGINT NOT NULL,
            rev BIGINT NOT NULL
        );
        -- Who uploaded what, for quotas, rates and deletion by the owner.
        CREATE TABLE uploads (
            name VARCHAR PRIMARY KEY,
            owner_id BIGINT NOT NULL,
            size BIGINT NOT NULL,
            content_type VARCHAR NOT NULL,
            created_us BIGINT NOT NULL
        );
        """,
    ),
    (
        3,
        """
        -- Idempotency-Key of a create, written in the same transaction as the items it made;
        -- `result` is the serialized ItemList first answered. Purged after 24 h.
        CREATE TABLE idempotency_keys (
            owner_id BIGINT NOT NULL,
            key VARCHAR NOT NULL,
            request_hash BLOB NOT NULL,
            result BLOB NOT NULL,
            created_us BIGINT NOT NULL,
            PRIMARY KEY (owner_id, key)
        );
        """,
    ),
]

ITEM_COLUMNS = "id, title, description, status, priority, owner_id, created_us, updated_us, version"


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply pending migrations; returns the schema version now in force."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_us BIGINT NOT NULL)"
    )
    row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    current = int(row[0]) if row else 0
    for version, sql in MIGRATIONS:
        if version <= current:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations VALUES (?, epoch_us(now()))", [version])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        current = version
    return current
