"""Apply a batch of upstream characters in ONE transaction, on PostgreSQL (the twin of
marveld/storage/changes.py: same steps, same results; read that module's docstring).

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

import logging
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg

from marveld.domain.changes import (
    CHARACTER_ADDED,
    Change,
    Event,
    Provenance,
    diff,
    event_for,
    project,
)
from marveld.domain.characters import Character
from marveld.domain.invalidation import ChangedNames
from marveld.domain.queries import LIST_KEY_PREFIX, CharacterQuery, fold_name
from marveld.storage.changes import BatchResult, StoredCharacter
from marveld.storage.codec import dump_json, load_json, text_to_time, time_to_text
from marveld.storage.postgres import events as event_log
from marveld.storage.postgres.database import PgDatabase
from marveld.storage.postgres.schema import EVENT_LOCK
from marveld.storage.postgres.search import stored, tokenize
from marveld.storage.postgres.sync_state import write_state

log = logging.getLogger(__name__)

# Every list key sorts between these two (``?`` is U+003F, ``@`` U+0040): a range scan of
# the cache_key index (COLLATE "C") instead of a full one.
_LIST_KEYS_FROM, _LIST_KEYS_TO = LIST_KEY_PREFIX, LIST_KEY_PREFIX[:-1] + "@"

__all__ = [
    "BatchResult",
    "PgChangeRepo",
    "StoredCharacter",
    "apply_changes",
    "known_characters",
    "write_characters",
]


def _utc(value: datetime) -> datetime:
    """``value`` in UTC, at SQLite's precision; ValueError for a naive time, as SQLite's."""
    return text_to_time(time_to_text(value))


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
    stamp = _utc(now)

    def values(c: Character) -> tuple[str, str, str, str, str, str]:
        return (
            c.name,
            c.description,
            c.image_url,
            c.modified_raw,
            c.content_hash(),
            dump_json(c.to_json()),
        )

    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO characters (id, marvel_id, name, description, image_url, modified,"
            " content_hash, data, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(str(uuid.uuid4()), c.id, *values(c), stamp, stamp) for c in added],
        )
        cur.executemany(
            "UPDATE characters SET name = %s, description = %s, image_url = %s, modified = %s,"
            " content_hash = %s, data = %s, updated_at = %s WHERE marvel_id = %s",
            [(*values(c), stamp, c.id) for c in changed],
        )


def apply_changes(
    conn: psycopg.Connection,
    characters: Iterable[Character],
    *,
    provenance: Provenance,
    now: datetime,
    match_added: bool = True,
    keep_key: str | None = None,
    state: Mapping[str, Any] | None = None,
    delivery_id: str | None = None,
) -> BatchResult:
    """Diff ``characters`` (the last occurrence of an id wins) and apply what changed.

    ``match_added``: whether additions also invalidate the cached list queries they match.
    Before the first full sync marveld cannot tell a new character from one it has not
    seen yet (and the bulk import sees every one for the first time), so there only the
    entries holding a changed character go. ``keep_key``: a cache entry the caller is
    rewriting in this transaction, never deleted here. ``state``: ``sync_state`` rows
    (key → JSON value) to write. ``delivery_id``: the webhook delivery to mark applied.
    """
    latest = {c.id: c for c in characters}
    if latest:
        # One batch at a time from the diff on, as SQLite's one writer: two batches with
        # the same new character would otherwise both insert it. The lock is the event
        # log's (append takes it again, a no-op), so no order of locks can deadlock.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENT_LOCK,))
    changes = _diff(conn, latest.values())
    events = [event_for(change, provenance, now) for change in changes]
    if changes:
        write_characters(
            conn,
            [c.current for c in changes if c.added],
            [c.current for c in changes if not c.added],
            now,
        )
        events = event_log.append(conn, events)
        _project(conn, events)
    forgotten = _invalidate(conn, changes, match_added=match_added, keep_key=keep_key)
    if state:
        write_state(conn, state, now)
    if delivery_id is not None:
        conn.execute(
            "UPDATE webhook_deliveries SET applied_at = %s WHERE id = %s",
            (_utc(now), delivery_id),
        )
    added = sum(c.added for c in changes)
    if changes:
        log.debug(
            "%s: %d added, %d updated, %d cache entries invalidated",
            provenance.correlation_id,
            added,
            len(changes) - added,
            len(forgotten),
        )
    return BatchResult(
        added=added,
        updated=len(changes) - added,
        events=tuple(events),
        forgotten=forgotten,
    )


def _diff(conn: psycopg.Connection, characters: Collection[Character]) -> list[Change]:
    known = known_characters(conn, (c.id for c in characters))
    changes: list[Change] = []
    for character in characters:
        stored_row = known.get(character.id)
        if stored_row is not None and stored_row.content_hash == character.content_hash():
            continue  # identical: decoding the stored copy is not needed
        change = diff(None if stored_row is None else stored_row.character(), character)
        if change is not None:
            changes.append(change)
    return changes


def _project(conn: psycopg.Connection, events: Sequence[Event]) -> None:
    """The read table after ``events`` (in seq order), from the events alone; with each
    row's search tokens."""
    updated_ids = [e.data["marvel_id"] for e in events if e.type != CHARACTER_ADDED]
    current: dict[int, dict[str, Any]] = {
        int(marvel_id): load_json(data)
        for marvel_id, data in conn.execute(
            "SELECT marvel_id, data FROM character_reads WHERE marvel_id = ANY(%s)",
            (updated_ids,),
        ).fetchall()
    }
    for event in events:
        marvel_id = event.data["marvel_id"]
        current[marvel_id] = project(current.get(marvel_id), event)
    read: list[Character] = []
    for marvel_id in dict.fromkeys(e.data["marvel_id"] for e in events):
        read.append(Character.from_json(current[marvel_id]))
    tokens = tokenize([text for c in read for text in (c.name, c.description)])
    rows = [
        (
            character.id,
            character.name,
            fold_name(character.name),
            character.description,
            character.image_url,
            character.modified,
            dump_json(current[character.id]),
            stored(tokens[2 * i]),
            stored(tokens[2 * i + 1]),
        )
        for i, character in enumerate(read)
    ]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO character_reads (marvel_id, name, name_folded, description, image_url,"
            " modified_at, data, name_tokens, description_tokens)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (marvel_id) DO UPDATE SET name = excluded.name,"
            " name_folded = excluded.name_folded, description = excluded.description,"
            " image_url = excluded.image_url, modified_at = excluded.modified_at,"
            " data = excluded.data, name_tokens = excluded.name_tokens,"
            " description_tokens = excluded.description_tokens",
            rows,
        )


def _invalidate(
    conn: psycopg.Connection,
    changes: Sequence[Change],
    *,
    match_added: bool,
    keep_key: str | None,
) -> tuple[str, ...]:
    """Delete the cache entries that hold a changed character or whose list query matches
    one (before or after the change); returns their keys."""
    if not changes:
        return ()
    keys: dict[str, None] = dict.fromkeys(
        str(row[0])
        for row in conn.execute(
            "SELECT DISTINCT cache.cache_key FROM cache_characters"
            " JOIN cache ON cache.id = cache_characters.cache_id"
            " WHERE cache_characters.marvel_id = ANY(%s)",
            ([c.current.id for c in changes],),
        ).fetchall()
    )
    versions: list[Character] = []
    for change in changes:
        if change.previous is not None:
            versions += (change.previous, change.current)
        elif match_added:
            versions.append(change.current)
    names = ChangedNames(versions)
    if names:
        for (key,) in conn.execute(
            "SELECT cache_key FROM cache WHERE cache_key >= %s AND cache_key < %s",
            (_LIST_KEYS_FROM, _LIST_KEYS_TO),
        ).fetchall():
            if key in keys:
                continue
            try:
                query = CharacterQuery.from_cache_key(key)
            except ValueError:
                log.debug("cache key %r is not a list query; left alone", key)
                continue
            if names.touches(query):
                keys[key] = None
    keys.pop(keep_key or "", None)
    if keys:
        conn.execute("DELETE FROM cache WHERE cache_key = ANY(%s)", (list(keys),))
    return tuple(keys)


class PgChangeRepo:
    """Applies batches in their own write transaction (see :func:`apply_changes`)."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def apply(
        self,
        characters: Sequence[Character],
        *,
        provenance: Provenance,
        now: datetime,
        match_added: bool = True,
        state: Mapping[str, Any] | None = None,
        delivery_id: str | None = None,
    ) -> BatchResult:
        def run(conn: psycopg.Connection) -> BatchResult:
            return apply_changes(
                conn,
                characters,
                provenance=provenance,
                now=now,
                match_added=match_added,
                state=state,
                delivery_id=delivery_id,
            )

        return await self._db.write(run)
