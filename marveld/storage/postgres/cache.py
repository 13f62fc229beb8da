"""The ``cache`` table on PostgreSQL: the persistent tier of the page cache, tagged by
character id (the twin of marveld/storage/cache.py).

What differs from SQLite, and why:

- ``character_ids`` is ``bigint[]`` (SQLite: JSON text); the tags in ``cache_characters``
  are the same rows;
- times are ``timestamptz``, read back as aware datetimes and normalised to UTC;
- ``cache_key`` is ``COLLATE "C"``: keys compare byte by byte, as in SQLite.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import psycopg

from marveld.domain.changes import Provenance
from marveld.domain.characters import CharacterPage
from marveld.storage.cache import CacheEntry
from marveld.storage.codec import dump_json, load_json, text_to_time, time_to_text
from marveld.storage.postgres.changes import apply_changes
from marveld.storage.postgres.database import PgDatabase
from marveld.storage.postgres.sync_state import first_sync_done

log = logging.getLogger(__name__)

__all__ = ["CacheEntry", "PgCacheRepo"]

_COLUMNS = "cache_key, characters, etag, character_ids, created_at, expires_at, body_fetched_at"


def _utc(value: datetime) -> datetime:
    """``value`` in UTC, at SQLite's precision; ValueError for a naive time, as SQLite's."""
    return text_to_time(time_to_text(value))


def _entry(row: tuple[Any, ...]) -> CacheEntry:
    key, characters, etag, character_ids, created_at, expires_at, body_fetched_at = row
    return CacheEntry(
        key=key,
        page=CharacterPage.from_json(load_json(characters)),
        created_at=created_at.astimezone(UTC),
        expires_at=expires_at.astimezone(UTC),
        etag=etag,
        character_ids=tuple(int(i) for i in character_ids),
        body_fetched_at=(body_fetched_at or created_at).astimezone(UTC),
    )


class PgCacheRepo:
    """Pages by normalized cache key. Expiry is data: :meth:`get` returns expired entries
    too, and the cache policy decides what to do with them."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def get(self, key: str) -> CacheEntry | None:
        def select(conn: psycopg.Connection) -> CacheEntry | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM cache WHERE cache_key = %s", (key,)
            ).fetchone()
            return None if row is None else _entry(row)

        return await self._db.read(select)

    async def put(
        self,
        key: str,
        page: CharacterPage,
        *,
        now: datetime,
        expires_at: datetime,
        fetched_at: datetime | None = None,
    ) -> tuple[str, ...]:
        """Store (or refresh) the page under ``key`` and apply its characters through the
        diff (events, read table, invalidation; correlation id ``read-through:<key>``), in
        ONE transaction. ``fetched_at`` (default ``now``) is when the body was last fetched
        in full (older than ``now`` after a 304). Returns the OTHER cache keys the changes
        invalidated, for the memory tier to drop too."""
        stamp, expires = _utc(now), _utc(expires_at)
        fetched = _utc(fetched_at or now)
        ids = list(dict.fromkeys(c.id for c in page.characters))
        body = dump_json(page.to_json())
        cause = f"read-through:{key}"
        provenance = Provenance(source="read_through", correlation_id=cause, causation_id=cause)

        def upsert(conn: psycopg.Connection) -> tuple[str, ...]:
            # Before the first full sync a character seen for the first time may be an old
            # one: only entries that hold a changed character are invalidated then.
            result = apply_changes(
                conn,
                page.characters,
                provenance=provenance,
                now=now,
                match_added=first_sync_done(conn),
                keep_key=key,
            )
            row = conn.execute(
                "INSERT INTO cache (cache_key, characters, etag, character_ids,"
                " created_at, updated_at, expires_at, body_fetched_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (cache_key) DO UPDATE SET characters = excluded.characters,"
                " etag = excluded.etag, character_ids = excluded.character_ids,"
                " created_at = excluded.created_at, updated_at = excluded.updated_at,"
                " expires_at = excluded.expires_at, body_fetched_at = excluded.body_fetched_at"
                " RETURNING id",
                (key, body, page.etag, ids, stamp, stamp, expires, fetched),
            ).fetchone()
            assert row is not None  # INSERT ... RETURNING always returns the row
            cache_id = row[0]
            conn.execute("DELETE FROM cache_characters WHERE cache_id = %s", (cache_id,))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO cache_characters (cache_id, marvel_id) VALUES (%s, %s)",
                    [(cache_id, marvel_id) for marvel_id in ids],
                )
            return result.forgotten

        return await self._db.write(upsert)

    async def delete_expired(self, now: datetime) -> int:
        """Remove entries with ``expires_at <= now``; returns how many."""
        stamp = _utc(now)
        removed = await self._db.write(
            lambda conn: conn.execute("DELETE FROM cache WHERE expires_at <= %s", (stamp,)).rowcount
        )
        if removed:
            log.debug("cache: %d expired entries removed", removed)
        return removed

    async def delete(self, key: str) -> bool:
        removed = await self._db.write(
            lambda conn: conn.execute("DELETE FROM cache WHERE cache_key = %s", (key,)).rowcount
        )
        return removed > 0

    async def delete_for_character(self, marvel_id: int) -> list[str]:
        """Remove every entry that holds the character; returns their keys."""

        def delete(conn: psycopg.Connection) -> list[str]:
            rows = conn.execute(
                "DELETE FROM cache WHERE id IN"
                " (SELECT cache_id FROM cache_characters WHERE marvel_id = %s)"
                " OR cache_key = %s RETURNING cache_key",
                (marvel_id, f"characters/{marvel_id}"),
            ).fetchall()
            return sorted(str(row[0]) for row in rows)

        return await self._db.write(delete)

    async def clear(self) -> int:
        """Remove every entry; returns how many."""
        return await self._db.write(lambda conn: conn.execute("DELETE FROM cache").rowcount)

    async def count(self) -> int:
        def select(conn: psycopg.Connection) -> int:
            row = conn.execute("SELECT count(*) FROM cache").fetchone()
            assert row is not None  # an aggregate always returns a row
            return int(row[0])

        return await self._db.read(select)
