"""The ``sync_state`` table: small named values that must survive a restart."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from marveld.storage.codec import time_to_text
from marveld.storage.database import Database


class StateRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> str | None:
        def select(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

        return await self._db.read(select)

    async def set(self, key: str, value: str, now: datetime) -> None:
        stamp = time_to_text(now)

        def upsert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO sync_state (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (key, value, stamp),
            )

        await self._db.write(upsert)
