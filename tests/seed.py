"""Users that exist before a store test starts: the store refuses writes by actors it never
registered (a token for user -5 or 10**12 writes nothing), and most store tests write as
user 1, 2, 3... without registering anyone first."""

from __future__ import annotations

from pathlib import Path

import duckdb

from service.store.schema import migrate

SEEDED_USERS = 20  # ids 1..20, named user1..user20


def seed_users(db_path: Path, count: int = SEEDED_USERS) -> None:
    """Create the database at `db_path` with users 1..count (before the engine opens it)."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db_path))
    try:
        migrate(con)
        for uid in range(1, count + 1):
            con.execute("INSERT INTO users VALUES (?, ?, 'seeded', 0)", [uid, f"user{uid}"])
        con.execute("UPDATE id_counters SET next_user_id = ?", [count + 1])
    finally:
        con.close()
