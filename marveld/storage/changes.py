"""Apply a batch of upstream characters in ONE transaction (DESIGN §4, Consistency): the
SQLite statements of marveld/storage/changes_base.py, which holds the steps and their order.

:func:`apply_changes` runs inside the caller's write transaction and does, all or none:
diff against ``characters`` (``domain.changes``), upsert ``characters``, append the events,
project them into the read table ``character_reads`` (the FTS index follows through its
triggers), delete the cache entries the changes make wrong, write the caller's
``sync_state`` rows (a poller checkpoint, say) and mark a webhook delivery applied. It
returns the deleted cache keys so the caller can drop them from the memory tier too.
Re-applying the same data finds nothing to change and appends nothing.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from marveld.domain.changes import Event
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
from marveld.storage.codec import dump_json, load_json, time_to_text
from marveld.storage.sync_state import write_state

__all__ = [
    "BATCHES",
    "BatchResult",
    "ChangeRepo",
    "StoredCharacter",
    "apply_changes",
    "known_characters",
    "write_characters",
]


def known_characters(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, StoredCharacter]:
    """The stored rows of the characters among ``ids`` that exist."""
    return {
        row["marvel_id"]: StoredCharacter(row["content_hash"], row["data"])
        for row in conn.execute(
            "SELECT marvel_id, content_hash, data FROM characters"
            " WHERE marvel_id IN (SELECT value FROM json_each(?))",
            (dump_json(list(ids)),),
        )
    }


def write_characters(
    conn: sqlite3.Connection,
    added: Sequence[Character],
    changed: Sequence[Character],
    now: datetime,
) -> None:
    """Insert ``added`` and overwrite ``changed`` (created_at kept), in the caller's
    transaction."""
    stamp = time_to_text(now)
    conn.executemany(
        "INSERT INTO characters (id, marvel_id, name, description, image_url, modified,"
        " content_hash, data, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        inserted_rows(added, stamp),
    )
    conn.executemany(
        "UPDATE characters SET name = ?, description = ?, image_url = ?, modified = ?,"
        " content_hash = ?, data = ?, updated_at = ? WHERE marvel_id = ?",
        updated_rows(changed, stamp),
    )


class _SqliteBatches(Batches[sqlite3.Connection]):
    """Ids go in as JSON text through ``json_each``; times as text."""

    _known_characters = staticmethod(known_characters)
    _write_characters = staticmethod(write_characters)
    _write_state = staticmethod(write_state)

    def _append(self, conn: sqlite3.Connection, events: Sequence[Event]) -> list[Event]:
        """One writer: the AUTOINCREMENT values of one batch are consecutive."""
        conn.executemany(
            "INSERT INTO events (id, stream_id, causation_id, correlation_id, type, created_at,"
            " occurred_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e.id,
                    e.stream_id,
                    e.causation_id,
                    e.correlation_id,
                    e.type,
                    time_to_text(e.created_at),
                    time_to_text(e.occurred_at),
                    dump_json(e.data),
                )
                for e in events
            ],
        )
        last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
        first = last - len(events) + 1
        return [dataclasses.replace(e, seq=first + i) for i, e in enumerate(events)]

    def _read_data(self, conn: sqlite3.Connection, ids: list[int]) -> dict[int, dict[str, Any]]:
        return {
            row["marvel_id"]: load_json(row["data"])
            for row in conn.execute(
                "SELECT marvel_id, data FROM character_reads"
                " WHERE marvel_id IN (SELECT value FROM json_each(?))",
                (dump_json(ids),),
            )
        }

    def _write_reads(self, conn: sqlite3.Connection, rows: Sequence[ReadRow]) -> None:
        """The FTS index follows through its triggers."""
        conn.executemany(
            "INSERT INTO character_reads (marvel_id, name, name_folded, description, image_url,"
            " modified_at, data) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (marvel_id) DO UPDATE SET name = excluded.name,"
            " name_folded = excluded.name_folded, description = excluded.description,"
            " image_url = excluded.image_url, modified_at = excluded.modified_at,"
            " data = excluded.data",
            [
                (
                    r.marvel_id,
                    r.character.name,
                    fold_name(r.character.name),
                    r.character.description,
                    r.character.image_url,
                    None if r.character.modified is None else time_to_text(r.character.modified),
                    dump_json(r.data),
                )
                for r in rows
            ],
        )

    def _keys_holding(self, conn: sqlite3.Connection, ids: list[int]) -> Iterable[str]:
        return (
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT cache.cache_key FROM cache_characters"
                " JOIN cache ON cache.id = cache_characters.cache_id"
                " WHERE cache_characters.marvel_id IN (SELECT value FROM json_each(?))",
                (dump_json(ids),),
            )
        )

    def _keys_between(self, conn: sqlite3.Connection, start: str, stop: str) -> Iterable[str]:
        return (
            key
            for (key,) in conn.execute(
                "SELECT cache_key FROM cache WHERE cache_key >= ? AND cache_key < ?",
                (start, stop),
            )
        )

    def _delete_keys(self, conn: sqlite3.Connection, keys: list[str]) -> None:
        conn.execute(
            "DELETE FROM cache WHERE cache_key IN (SELECT value FROM json_each(?))",
            (dump_json(keys),),
        )

    def _mark_applied(self, conn: sqlite3.Connection, delivery_id: str, now: datetime) -> None:
        conn.execute(
            "UPDATE webhook_deliveries SET applied_at = ? WHERE id = ?",
            (time_to_text(now), delivery_id),
        )


BATCHES = _SqliteBatches()

#: Diff a batch and apply what changed, in the caller's transaction (see
#: :meth:`~marveld.storage.changes_base.Batches.apply`).
apply_changes = BATCHES.apply


class ChangeRepo(ChangeRepoBase[sqlite3.Connection]):
    """Applies batches in their own write transaction (see :func:`apply_changes`)."""

    _batches = BATCHES
