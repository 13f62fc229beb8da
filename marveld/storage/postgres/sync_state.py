"""The ``sync_state`` table on PostgreSQL (keys and meaning: marveld/storage/sync_state.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg

from marveld.storage.codec import dump_json, load_json
from marveld.storage.postgres.database import PgDatabase
from marveld.storage.sync_state import BOOTSTRAP


def read_state(conn: psycopg.Connection, key: str) -> Any:
    """The JSON value stored under ``key``, or None."""
    row = conn.execute("SELECT value FROM sync_state WHERE key = %s", (key,)).fetchone()
    return None if row is None else load_json(row[0])


def write_state(conn: psycopg.Connection, values: Mapping[str, Any], now: datetime) -> None:
    """Store each value (JSON) under its key, in the caller's transaction."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO sync_state (key, value, updated_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (key) DO UPDATE"
            " SET value = excluded.value, updated_at = excluded.updated_at",
            [(key, dump_json(value), now) for key, value in values.items()],
        )


def first_sync_done(conn: psycopg.Connection) -> bool:
    bootstrap = read_state(conn, BOOTSTRAP)
    return isinstance(bootstrap, dict) and bootstrap.get("completed_at") is not None


class PgSyncStateRepo:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def get_many(self, *keys: str) -> dict[str, Any]:
        """The values of ``keys`` (None for a missing one), read in one snapshot."""

        def select(conn: psycopg.Connection) -> dict[str, Any]:
            return {key: read_state(conn, key) for key in keys}

        return await self._db.read(select, snapshot=True)

    async def get(self, key: str) -> Any:
        return (await self.get_many(key))[key]

    async def put(self, values: Mapping[str, Any], now: datetime) -> None:
        await self._db.write(lambda conn: write_state(conn, values, now))

    async def first_sync_done(self) -> bool:
        return await self._db.read(first_sync_done)
