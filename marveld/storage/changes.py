"""Apply a batch of upstream characters in ONE transaction (DESIGN §4, Consistency).

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
import logging
import sqlite3
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
from marveld.storage.codec import dump_json, load_json, time_to_text
from marveld.storage.database import Database
from marveld.storage.sync_state import write_state

log = logging.getLogger(__name__)

# Every list key sorts between these two (``?`` is U+003F, ``@`` U+0040): a range scan of
# the cache_key index instead of a full one.
_LIST_KEYS_FROM, _LIST_KEYS_TO = LIST_KEY_PREFIX, LIST_KEY_PREFIX[:-1] + "@"


@dataclass(frozen=True, slots=True)
class StoredCharacter:
    """A row of ``characters`` as the diff needs it: the hash, and the data to decode."""

    content_hash: str
    data: str

    def character(self) -> Character:
        return Character.from_json(load_json(self.data))


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

    def values(c: Character) -> tuple[str, str, str, str, str, str]:
        return (
            c.name,
            c.description,
            c.image_url,
            c.modified_raw,
            c.content_hash(),
            dump_json(c.to_json()),
        )

    conn.executemany(
        "INSERT INTO characters (id, marvel_id, name, description, image_url, modified,"
        " content_hash, data, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(str(uuid.uuid4()), c.id, *values(c), stamp, stamp) for c in added],
    )
    conn.executemany(
        "UPDATE characters SET name = ?, description = ?, image_url = ?, modified = ?,"
        " content_hash = ?, data = ?, updated_at = ? WHERE marvel_id = ?",
        [(*values(c), stamp, c.id) for c in changed],
    )


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one applied batch did. ``events`` carry their ``seq``; ``forgotten`` are the
    cache keys deleted from SQLite, for the memory tier to drop too."""

    added: int = 0
    updated: int = 0
    events: tuple[Event, ...] = ()
    forgotten: tuple[str, ...] = ()

    @property
    def changed(self) -> int:
        return self.added + self.updated


def apply_changes(
    conn: sqlite3.Connection,
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
    changes = _diff(conn, latest.values())
    events = [event_for(change, provenance, now) for change in changes]
    if changes:
        write_characters(
            conn,
            [c.current for c in changes if c.added],
            [c.current for c in changes if not c.added],
            now,
        )
        events = _append(conn, events)
        _project(conn, events)
    forgotten = _invalidate(conn, changes, match_added=match_added, keep_key=keep_key)
    if state:
        write_state(conn, state, now)
    if delivery_id is not None:
        conn.execute(
            "UPDATE webhook_deliveries SET applied_at = ? WHERE id = ?",
            (time_to_text(now), delivery_id),
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


def _diff(conn: sqlite3.Connection, characters: Collection[Character]) -> list[Change]:
    known = known_characters(conn, (c.id for c in characters))
    changes: list[Change] = []
    for character in characters:
        stored = known.get(character.id)
        if stored is not None and stored.content_hash == character.content_hash():
            continue  # identical: decoding the stored copy is not needed
        change = diff(None if stored is None else stored.character(), character)
        if change is not None:
            changes.append(change)
    return changes


def _append(conn: sqlite3.Connection, events: Sequence[Event]) -> list[Event]:
    """Append ``events`` in order; returns them with their ``seq`` (one writer: the
    AUTOINCREMENT values of one batch are consecutive)."""
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


def _project(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    """The read table after ``events`` (in seq order), from the events alone."""
    updated_ids = [e.data["marvel_id"] for e in events if e.type != CHARACTER_ADDED]
    current: dict[int, dict[str, Any]] = {
        row["marvel_id"]: load_json(row["data"])
        for row in conn.execute(
            "SELECT marvel_id, data FROM character_reads"
            " WHERE marvel_id IN (SELECT value FROM json_each(?))",
            (dump_json(updated_ids),),
        )
    }
    for event in events:
        marvel_id = event.data["marvel_id"]
        current[marvel_id] = project(current.get(marvel_id), event)
    rows = []
    for marvel_id in dict.fromkeys(e.data["marvel_id"] for e in events):
        data = current[marvel_id]
        character = Character.from_json(data)
        modified = character.modified
        rows.append(
            (
                marvel_id,
                character.name,
                fold_name(character.name),
                character.description,
                character.image_url,
                None if modified is None else time_to_text(modified),
                dump_json(data),
            )
        )
    conn.executemany(
        "INSERT INTO character_reads (marvel_id, name, name_folded, description, image_url,"
        " modified_at, data) VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (marvel_id) DO UPDATE SET name = excluded.name,"
        " name_folded = excluded.name_folded, description = excluded.description,"
        " image_url = excluded.image_url, modified_at = excluded.modified_at,"
        " data = excluded.data",
        rows,
    )


def _invalidate(
    conn: sqlite3.Connection,
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
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT cache.cache_key FROM cache_characters"
            " JOIN cache ON cache.id = cache_characters.cache_id"
            " WHERE cache_characters.marvel_id IN (SELECT value FROM json_each(?))",
            (dump_json([c.current.id for c in changes]),),
        )
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
            "SELECT cache_key FROM cache WHERE cache_key >= ? AND cache_key < ?",
            (_LIST_KEYS_FROM, _LIST_KEYS_TO),
        ):
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
        conn.execute(
            "DELETE FROM cache WHERE cache_key IN (SELECT value FROM json_each(?))",
            (dump_json(list(keys)),),
        )
    return tuple(keys)


class ChangeRepo:
    """Applies batches in their own write transaction (see :func:`apply_changes`)."""

    def __init__(self, db: Database) -> None:
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
        def run(conn: sqlite3.Connection) -> BatchResult:
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
