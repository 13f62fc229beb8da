"""The ``cache`` table on PostgreSQL: the persistent tier of the page cache, tagged by
character id (the twin of marveld/storage/cache.py; what both share:
marveld/storage/cache_base.py).

What differs from SQLite, and why:

- ``character_ids`` is ``bigint[]`` (SQLite: JSON text); the tags in ``cache_characters``
  are the same rows;
- times are ``timestamptz``, read back as aware datetimes and normalised to UTC;
- ``cache_key`` is ``COLLATE "C"``: keys compare byte by byte, as in SQLite.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg

from marveld.storage.cache_base import COLUMNS, CacheEntry, CacheRepoBase, CacheRow, cache_entry
from marveld.storage.postgres.changes import BATCHES
from marveld.storage.postgres.coordination import PgAnnouncing
from marveld.storage.postgres.sync_state import first_sync_done

__all__ = ["CacheEntry", "PgCacheRepo"]


def _to_time(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _to_ids(values: Iterable[Any]) -> Iterable[int]:
    return (int(i) for i in values)


class PgCacheRepo(PgAnnouncing, CacheRepoBase[psycopg.Connection]):
    """Pages by normalized cache key: ``timestamptz`` times, ``character_ids`` as ``bigint[]``."""

    _batches = BATCHES
    _first_sync_done = staticmethod(first_sync_done)
    _leases = True  # replicas fill keys: the fill_leases table

    def _claim(
        self, conn: psycopg.Connection, key: str, until: datetime, now: datetime
    ) -> datetime | None:
        taken = conn.execute(
            "INSERT INTO fill_leases (cache_key, holder, expires_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (cache_key) DO UPDATE SET holder = excluded.holder,"
            " expires_at = excluded.expires_at"
            " WHERE fill_leases.expires_at <= %s OR fill_leases.holder = excluded.holder"
            " RETURNING holder",
            (key, self._db.origin, until, now),
        ).fetchone()
        if taken is not None:
            return None
        held = conn.execute(
            "SELECT expires_at FROM fill_leases WHERE cache_key = %s", (key,)
        ).fetchone()
        return now if held is None else _to_time(held[0])

    def _release(self, conn: psycopg.Connection, key: str) -> None:
        conn.execute("DELETE FROM fill_leases WHERE cache_key = %s", (key,))

    def _select(self, conn: psycopg.Connection, key: str) -> CacheEntry | None:
        row = conn.execute(f"SELECT {COLUMNS} FROM cache WHERE cache_key = %s", (key,)).fetchone()
        return None if row is None else cache_entry(row, to_time=_to_time, to_ids=_to_ids)

    def _upsert(self, conn: psycopg.Connection, row: CacheRow) -> int:
        returned = conn.execute(
            "INSERT INTO cache (cache_key, characters, etag, character_ids,"
            " created_at, updated_at, expires_at, body_fetched_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (cache_key) DO UPDATE SET characters = excluded.characters,"
            " etag = excluded.etag, character_ids = excluded.character_ids,"
            " created_at = excluded.created_at, updated_at = excluded.updated_at,"
            " expires_at = excluded.expires_at, body_fetched_at = excluded.body_fetched_at"
            " RETURNING id",
            (
                row.key,
                row.body,
                row.etag,
                row.character_ids,
                row.created_at,
                row.created_at,
                row.expires_at,
                row.body_fetched_at,
            ),
        ).fetchone()
        assert returned is not None  # INSERT ... RETURNING always returns the row
        return int(returned[0])

    def _retag(self, conn: psycopg.Connection, cache_id: int, ids: list[int]) -> None:
        conn.execute("DELETE FROM cache_characters WHERE cache_id = %s", (cache_id,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO cache_characters (cache_id, marvel_id) VALUES (%s, %s)",
                [(cache_id, marvel_id) for marvel_id in ids],
            )

    def _delete_expired(self, conn: psycopg.Connection, now: datetime) -> int:
        return conn.execute("DELETE FROM cache WHERE expires_at <= %s", (now,)).rowcount

    def _delete(self, conn: psycopg.Connection, key: str) -> int:
        return conn.execute("DELETE FROM cache WHERE cache_key = %s", (key,)).rowcount

    def _delete_tagged(self, conn: psycopg.Connection, marvel_id: int, key: str) -> list[str]:
        rows = conn.execute(
            "DELETE FROM cache WHERE id IN"
            " (SELECT cache_id FROM cache_characters WHERE marvel_id = %s)"
            " OR cache_key = %s RETURNING cache_key",
            (marvel_id, key),
        ).fetchall()
        return [str(row[0]) for row in rows]

    def _clear(self, conn: psycopg.Connection) -> int:
        return conn.execute("DELETE FROM cache").rowcount

    def _count(self, conn: psycopg.Connection) -> int:
        row = conn.execute("SELECT count(*) FROM cache").fetchone()
        assert row is not None  # an aggregate always returns a row
        return int(row[0])
