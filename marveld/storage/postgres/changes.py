"""Apply a batch of upstream characters in ONE transaction, on PostgreSQL: the twin of
marveld/storage/changes.py (same steps, same results: marveld/storage/changes_base.py
holds them; read its docstring).

What differs from SQLite, and why:

- ids are sent as ``bigint[]`` / ``text[]`` and compared with ``= ANY(%s)`` (SQLite:
  ``json_each`` over JSON text);
- events go through :func:`marveld.storage.postgres.events.append`, which takes the event
  lock so that seq order is commit order (SQLite: one writer, ``last_insert_rowid``);
- a batch takes that lock before its diff: batches apply one at a time, as on SQLite's
  one writer (concurrent ones would both add a character new to each);
- the projection also stores each row's search tokens (SQLite's FTS5 triggers index the
  read table by themselves; see marveld/storage/postgres/search.py);
- times are ``timestamptz`` values, not text;
- list keys are scanned in ``COLLATE "C"`` order, SQLite's byte order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import psycopg

from marveld.domain.characters import Character
from marveld.domain.queries import fold_name
from marveld.storage.changes_base import (
    Batches,
    BatchResult,
    ChangeRepoBase,
    ReadRow,
    StoredCharacter,
    inserted_rows,
    updated_rows,
)
from marveld.storage.codec import dump_json, load_json
from marveld.storage.postgres import events as event_log
from marveld.storage.postgres.coordination import PgAnnouncing
from marveld.storage.postgres.schema import EVENT_LOCK
from marveld.storage.postgres.search import stored, tokenize
from marveld.storage.postgres.sync_state import write_state
from marveld.storage.twins import utc

__all__ = [
    "BATCHES",
    "BatchResult",
    "PgChangeRepo",
    "StoredCharacter",
    "apply_changes",
    "known_characters",
    "write_characters",
]


def known_characters(conn: psycopg.Connection, ids: Iterable[int]) -> dict[int, StoredCharacter]:
    """The stored rows of the characters among ``ids`` that exist."""
    return {
        int(marvel_id): StoredCharacter(content_hash, data)
        for marvel_id, content_hash, data in conn.execute(
            "SELECT marvel_id, content_hash, data FROM characters WHERE marvel_id = ANY(%s)",
            (list(ids),),
        ).fetchall()
    }


def write_characters(
    conn: psycopg.Connection,
    added: Sequence[Character],
    changed: Sequence[Character],
    now: datetime,
) -> None:
    """Insert ``added`` and overwrite ``changed`` (created_at kept), in the caller's
    transaction."""
    stamp = utc(now)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO characters (id, marvel_id, name, description, image_url, modified,"
            " content_hash, data, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            inserted_rows(added, stamp),
        )
        cur.executemany(
            "UPDATE characters SET name = %s, description = %s, image_url = %s, modified = %s,"
            " content_hash = %s, data = %s, updated_at = %s WHERE marvel_id = %s",
            updated_rows(changed, stamp),
        )


class _PgBatches(Batches[psycopg.Connection]):
    """Ids go in as arrays; times as ``timestamptz``; events through the event log."""

    _known_characters = staticmethod(known_characters)
    _write_characters = staticmethod(write_characters)
    _append = staticmethod(event_log.append)
    _write_state = staticmethod(write_state)

    def _lock(self, conn: psycopg.Connection) -> None:
        # One batch at a time from the diff on, as SQLite's one writer: two batches with
        # the same new character would otherwise both insert it. The lock is the event
        # log's (append takes it again, a no-op), so no order of locks can deadlock.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENT_LOCK,))

    def _read_data(self, conn: psycopg.Connection, ids: list[int]) -> dict[int, dict[str, Any]]:
        return {
            int(marvel_id): load_json(data)
            for marvel_id, data in conn.execute(
                "SELECT marvel_id, data FROM character_reads WHERE marvel_id = ANY(%s)",
                (ids,),
            ).fetchall()
        }

    def _write_reads(self, conn: psycopg.Connection, rows: Sequence[ReadRow]) -> None:
        """With each row's search tokens (name and description, tokenized at once)."""
        tokens = tokenize(
            [text for r in rows for text in (r.character.name, r.character.description)]
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO character_reads (marvel_id, name, name_folded, description,"
                " image_url, modified_at, data, name_tokens, description_tokens)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (marvel_id) DO UPDATE SET name = excluded.name,"
                " name_folded = excluded.name_folded, description = excluded.description,"
                " image_url = excluded.image_url, modified_at = excluded.modified_at,"
                " data = excluded.data, name_tokens = excluded.name_tokens,"
                " description_tokens = excluded.description_tokens",
                [
                    (
                        r.marvel_id,
                        r.character.name,
                        fold_name(r.character.name),
                        r.character.description,
                        r.character.image_url,
                        r.character.modified,
                        dump_json(r.data),
                        stored(tokens[2 * i]),
                        stored(tokens[2 * i + 1]),
                    )
                    for i, r in enumerate(rows)
                ],
            )

    def _keys_holding(self, conn: psycopg.Connection, ids: list[int]) -> Iterable[str]:
        return [
            str(row[0])
            for row in conn.execute(
                "SELECT DISTINCT cache.cache_key FROM cache_characters"
                " JOIN cache ON cache.id = cache_characters.cache_id"
                " WHERE cache_characters.marvel_id = ANY(%s)",
                (ids,),
            ).fetchall()
        ]

    def _keys_between(self, conn: psycopg.Connection, start: str, stop: str) -> Iterable[str]:
        """The cache_key index is ``COLLATE "C"``: byte order, as SQLite's."""
        return [
            key
            for (key,) in conn.execute(
                "SELECT cache_key FROM cache WHERE cache_key >= %s AND cache_key < %s",
                (start, stop),
            ).fetchall()
        ]

    def _delete_keys(self, conn: psycopg.Connection, keys: list[str]) -> None:
        conn.execute("DELETE FROM cache WHERE cache_key = ANY(%s)", (keys,))

    def _mark_applied(self, conn: psycopg.Connection, delivery_id: str, now: datetime) -> None:
        conn.execute(
            "UPDATE webhook_deliveries SET applied_at = %s WHERE id = %s",
            (utc(now), delivery_id),
        )


BATCHES = _PgBatches()

#: Diff a batch and apply what changed, in the caller's transaction (see
#: :meth:`~marveld.storage.changes_base.Batches.apply`).
apply_changes = BATCHES.apply


class PgChangeRepo(PgAnnouncing, ChangeRepoBase[psycopg.Connection]):
    """Applies batches in their own write transaction (see :func:`apply_changes`)."""

    _batches = BATCHES
