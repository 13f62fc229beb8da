"""The ``cache`` table: the persistent tier of the page cache, tagged by character id
(what both backends share: marveld/storage/cache_base.py)."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from marveld.storage.cache_base import COLUMNS, CacheEntry, CacheRepoBase, CacheRow, cache_entry
from marveld.storage.changes import BATCHES
from marveld.storage.codec import dump_json, load_json, text_to_time, time_to_text
from marveld.storage.sync_state import first_sync_done

__all__ = ["CacheEntry", "CacheRepo"]


class CacheRepo(CacheRepoBase[sqlite3.Connection]):
    """Pages by normalized cache key: times as text, ``character_ids`` as JSON text."""

    _batches = BATCHES
    _first_sync_done = staticmethod(first_sync_done)

    def _select(self, conn: sqlite3.Connection, key: str) -> CacheEntry | None:
        row = conn.execute(f"SELECT {COLUMNS} FROM cache WHERE cache_key = ?", (key,)).fetchone()
        return None if row is None else cache_entry(row, to_time=text_to_time, to_ids=load_json)

    def _upsert(self, conn: sqlite3.Connection, row: CacheRow) -> int:
        stamp, ids = time_to_text(row.created_at), dump_json(row.character_ids)
        expires, fetched = time_to_text(row.expires_at), time_to_text(row.body_fetched_at)
        return int(
            conn.execute(
                "INSERT INTO cache (cache_key, characters, etag, character_ids,"
                " created_at, updated_at, expires_at, body_fetched_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (cache_key) DO UPDATE SET characters = excluded.characters,"
                " etag = excluded.etag, character_ids = excluded.character_ids,"
                " created_at = excluded.created_at, updated_at = excluded.updated_at,"
                " expires_at = excluded.expires_at, body_fetched_at = excluded.body_fetched_at"
                " RETURNING id",
                (row.key, row.body, row.etag, ids, stamp, stamp, expires, fetched),
            ).fetchone()[0]
        )

    def _retag(self, conn: sqlite3.Connection, cache_id: int, ids: list[int]) -> None:
        conn.execute("DELETE FROM cache_characters WHERE cache_id = ?", (cache_id,))
        conn.executemany(
            "INSERT INTO cache_characters (cache_id, marvel_id) VALUES (?, ?)",
            [(cache_id, marvel_id) for marvel_id in ids],
        )

    def _delete_expired(self, conn: sqlite3.Connection, now: datetime) -> int:
        return conn.execute(
            "DELETE FROM cache WHERE expires_at <= ?", (time_to_text(now),)
        ).rowcount

    def _delete(self, conn: sqlite3.Connection, key: str) -> int:
        return conn.execute("DELETE FROM cache WHERE cache_key = ?", (key,)).rowcount

    def _delete_tagged(self, conn: sqlite3.Connection, marvel_id: int, key: str) -> list[str]:
        rows = conn.execute(
            "DELETE FROM cache WHERE id IN"
            " (SELECT cache_id FROM cache_characters WHERE marvel_id = ?)"
            " OR cache_key = ? RETURNING cache_key",
            (marvel_id, key),
        ).fetchall()
        return [str(row[0]) for row in rows]

    def _clear(self, conn: sqlite3.Connection) -> int:
        return conn.execute("DELETE FROM cache").rowcount

    def _count(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM cache").fetchone()[0])
