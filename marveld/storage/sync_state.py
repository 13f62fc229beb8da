"""The ``sync_state`` table: positions of background work, as JSON values by key (the
keys and their meaning: marveld/storage/sync_state_base.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from marveld.storage.codec import dump_json, load_json, time_to_text
from marveld.storage.sync_state_base import (
    BOOTSTRAP,
    LAST_COMPLETED,
    POLL_CHECKPOINT,
    POLL_FIRST_PAGE,
    SyncStateRepoBase,
    bootstrap_completed,
)

__all__ = [
    "BOOTSTRAP",
    "LAST_COMPLETED",
    "POLL_CHECKPOINT",
    "POLL_FIRST_PAGE",
    "SyncStateRepo",
    "first_sync_done",
    "read_state",
    "write_state",
]


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
    return bootstrap_completed(read_state(conn, BOOTSTRAP))


def lock_key(conn: sqlite3.Connection, key: str) -> None:
    """Nothing to do: a write transaction (``BEGIN IMMEDIATE``) holds the whole file."""


class SyncStateRepo(SyncStateRepoBase[sqlite3.Connection]):
    _read_state = staticmethod(read_state)
    _write_state = staticmethod(write_state)
    _lock_key = staticmethod(lock_key)
