"""The ``sync_state`` table on PostgreSQL (keys and meaning: marveld/storage/sync_state_base.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import psycopg

from marveld.storage.codec import dump_json, load_json
from marveld.storage.postgres.schema import SYNC_STATE_LOCKS
from marveld.storage.sync_state_base import BOOTSTRAP, SyncStateRepoBase, bootstrap_completed


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
    return bootstrap_completed(read_state(conn, BOOTSTRAP))


def lock_key(conn: psycopg.Connection, key: str) -> None:
    """A transaction-level advisory lock on the key's hash (a row lock cannot hold a key
    that has no row yet)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (SYNC_STATE_LOCKS, key))


class PgSyncStateRepo(SyncStateRepoBase[psycopg.Connection]):
    _read_state = staticmethod(read_state)
    _write_state = staticmethod(write_state)
    _lock_key = staticmethod(lock_key)
