"""The ``cache`` table: the persistent tier of the page cache, tagged by character id."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from marveld.domain.changes import Provenance
from marveld.domain.characters import CharacterPage
from marveld.storage.changes import apply_changes
from marveld.storage.codec import dump_json, load_json, text_to_time, time_to_text
from marveld.storage.database import Database
from marveld.storage.sync_state import first_sync_done

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stored page. ``created_at`` is when the upstream last confirmed it (a 200 or a
    304); ``body_fetched_at`` when its body was last fetched in full (a 200)."""

    key: str
    page: CharacterPage
    created_at: datetime
    expires_at: datetime
    etag: str | None
    character_ids: tuple[int, ...]
    body_fetched_at: datetime


def _entry(row: sqlite3.Row) -> CacheEntry:
    return CacheEntry(
        key=row["cache_key"],
        page=CharacterPage.from_json(load_json(row["characters"])),
        created_at=text_to_time(row["created_at"]),
        expires_at=text_to_time(row["expires_at"]),
        etag=row["etag"],
        character_ids=tuple(load_json(row["character_ids"])),
        body_fetched_at=text_to_time(row["body_fetched_at"] or row["created_at"]),
    )


class CacheRepo:
    """Pages by normalized cache key. Expiry is data: :meth:`get` returns expired entries
    too, and the cache policy decides what to do with them."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key: str) -> CacheEntry | None:
        def select(conn: sqlite3.Connection) -> CacheEntry | None:
            row = conn.execute(
                "SELECT cache_key, characters, etag, character_ids, created_at, expires_at,"
                " body_fetched_at FROM cache WHERE cache_key = ?",
                (key,),
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
        stamp, expires = time_to_text(now), time_to_text(expires_at)
        fetched = time_to_text(fetched_at or now)
        ids = list(dict.fromkeys(c.id for c in page.characters))
        body = dump_json(page.to_json())
        cause = f"read-through:{key}"
        provenance = Provenance(source="read_through", correlation_id=cause, causation_id=cause)

        def upsert(conn: sqlite3.Connection) -> tuple[str, ...]:
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
            cache_id = conn.execute(
                "INSERT INTO cache (cache_key, characters, etag, character_ids,"
                " created_at, updated_at, expires_at, body_fetched_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (cache_key) DO UPDATE SET characters = excluded.characters,"
                " etag = excluded.etag, character_ids = excluded.character_ids,"
                " created_at = excluded.created_at, updated_at = excluded.updated_at,"
                " expires_at = excluded.expires_at, body_fetched_at = excluded.body_fetched_at"
                " RETURNING id",
                (key, body, page.etag, dump_json(ids), stamp, stamp, expires, fetched),
            ).fetchone()[0]
            conn.execute("DELETE FROM cache_characters WHERE cache_id = ?", (cache_id,))
            conn.executemany(
                "INSERT INTO cache_characters (cache_id, marvel_id) VALUES (?, ?)",
                [(cache_id, marvel_id) for marvel_id in ids],
            )
            return result.forgotten

        return await self._db.write(upsert)

    async def delete_expired(self, now: datetime) -> int:
        """Remove entries with ``expires_at <= now``; returns how many."""
        stamp = time_to_text(now)
        removed = await self._db.write(
            lambda conn: conn.execute("DELETE FROM cache WHERE expires_at <= ?", (stamp,)).rowcount
        )
        if removed:
            log.debug("cache: %d expired entries removed", removed)
        return removed

    async def delete(self, key: str) -> bool:
        removed = await self._db.write(
            lambda conn: conn.execute("DELETE FROM cache WHERE cache_key = ?", (key,)).rowcount
        )
        return removed > 0

    async def delete_for_character(self, marvel_id: int) -> list[str]:
        """Remove every entry that holds the character; returns their keys."""

        def delete(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "DELETE FROM cache WHERE id IN"
                " (SELECT cache_id FROM cache_characters WHERE marvel_id = ?)"
                " OR cache_key = ? RETURNING cache_key",
                (marvel_id, f"characters/{marvel_id}"),
            ).fetchall()
            return sorted(str(row[0]) for row in rows)

        return await self._db.write(delete)

    async def clear(self) -> int:
        """Remove every entry; returns how many."""
        return await self._db.write(lambda conn: conn.execute("DELETE FROM cache").rowcount)

    async def count(self) -> int:
        def select(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM cache").fetchone()[0])

        return await self._db.read(select)
