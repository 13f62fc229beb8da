"""The ``sync_state`` table: positions of background work, as JSON values by key.

The keys change detection uses (the services own their meaning; storage only reads
:data:`BOOTSTRAP` to know whether the first full sync is done):

- ``sync.bootstrap``: the first full sync, ``{"run_id", "next_offset", "started_at",
  "completed_at", "bulk": true, ...}``; its events have correlation id
  ``bootstrap:<run_id>`` and notify nobody.
- ``poll.checkpoint``: ``{"modified_since": ...}``, the newest ``modified`` a sync has seen.
- ``poll.first_page``: ``{"params": ..., "etag": ...}``, the first page of the last poll.
- ``sync.last_completed``: ``{"at": ..., "kind": ...}``, the last sync that ended well.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from marveld.storage.codec import dump_json, load_json, time_to_text
from marveld.storage.database import Database

BOOTSTRAP: Final = "sync.bootstrap"
POLL_CHECKPOINT: Final = "poll.checkpoint"
POLL_FIRST_PAGE: Final = "poll.first_page"
LAST_COMPLETED: Final = "sync.last_completed"


def read_state(conn: sqlite3.Connection, key: str) -> Any:
    """The JSON value stored under ``key``, or None."""
    row = conn.execute("SELECT value FROM sync_state WHERE key = ?", (key,)).fetchone()
    return None if row is None else load_json(row[0])


def write_state(conn: sqlite3.Connection, values: Mapping[str, Any], now: datetime) -> None:
    """Store each value (JSON) under its key, in the caller's transaction."""
    stamp = time_to_text(now)
    conn.executemany(
        "INSERT INTO sync_state (key, value, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        [(key, dump_json(value), stamp) for key, value in values.items()],
    )


def first_sync_done(conn: sqlite3.Connection) -> bool:
    bootstrap = read_state(conn, BOOTSTRAP)
    return isinstance(bootstrap, dict) and bootstrap.get("completed_at") is not None


class SyncStateRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_many(self, *keys: str) -> dict[str, Any]:
        """The values of ``keys`` (None for a missing one), read in one snapshot."""

        def select(conn: sqlite3.Connection) -> dict[str, Any]:
            return {key: read_state(conn, key) for key in keys}

        return await self._db.read(select, snapshot=True)

    async def get(self, key: str) -> Any:
        return (await self.get_many(key))[key]

    async def put(self, values: Mapping[str, Any], now: datetime) -> None:
        await self._db.write(lambda conn: write_state(conn, values, now))

    async def first_sync_done(self) -> bool:
        return await self._db.read(first_sync_done)
