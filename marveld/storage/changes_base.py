"""Applying a batch of upstream characters, backend-neutral: the steps in their order and
the logic between them; each backend gives the statements (marveld/storage/changes.py and
its PostgreSQL twin).

One batch, in the caller's write transaction, all or none: diff against ``characters``
(``domain.changes``), write ``characters``, append the events, project them into the read
table ``character_reads``, delete the cache entries the changes make wrong, write the
caller's ``sync_state`` rows and mark a webhook delivery applied. Re-applying the same data
finds nothing to change and appends nothing.
"""

from __future__ import annotations

import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic

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
from marveld.domain.queries import LIST_KEY_PREFIX, CharacterQuery
from marveld.storage.codec import dump_json, load_json
from marveld.storage.coordination import Announcing, Signal
from marveld.storage.twins import Conn, Db

# Every list key sorts between these two (``?`` is U+003F, ``@`` U+0040): a range scan of
# the cache_key index instead of a full one.
LIST_KEYS_FROM, LIST_KEYS_TO = LIST_KEY_PREFIX, LIST_KEY_PREFIX[:-1] + "@"


@dataclass(frozen=True, slots=True)
class StoredCharacter:
    """A row of ``characters`` as the diff needs it: the hash, and the data to decode."""

    content_hash: str
    data: str

    def character(self) -> Character:
        return Character.from_json(load_json(self.data))


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What one applied batch did. ``events`` carry their ``seq``; ``forgotten`` are the
    cache keys deleted from the database, for the memory tier to drop too."""

    added: int = 0
    updated: int = 0
    events: tuple[Event, ...] = ()
    forgotten: tuple[str, ...] = ()

    @property
    def changed(self) -> int:
        return self.added + self.updated


@dataclass(frozen=True, slots=True)
class ReadRow:
    """A ``character_reads`` row after a batch: the projected data, and the character it
    decodes to (for the columns)."""

    marvel_id: int
    character: Character
    data: dict[str, Any]


def inserted_rows(added: Iterable[Character], stamp: object) -> list[tuple[object, ...]]:
    """The values of the INSERT of ``added`` into ``characters``: id, marvel_id, the
    :func:`_columns`, created_at and updated_at (``stamp``, in the backend's time type)."""
    return [(str(uuid.uuid4()), c.id, *_columns(c), stamp, stamp) for c in added]


def updated_rows(changed: Iterable[Character], stamp: object) -> list[tuple[object, ...]]:
    """The values of the UPDATE of ``changed`` in ``characters``: the :func:`_columns`,
    updated_at (``stamp``), then the marvel_id of the WHERE."""
    return [(*_columns(c), stamp, c.id) for c in changed]


def _columns(c: Character) -> tuple[str, str, str, str, str, str]:
    """name, description, image_url, modified, content_hash, data."""
    return (
        c.name,
        c.description,
        c.image_url,
        c.modified_raw,
        c.content_hash(),
        dump_json(c.to_json()),
    )


class Batches(ABC, Generic[Conn]):
    """:meth:`apply` over one backend's statements. Times reach them as given (each
    backend converts ``now`` as it stores times)."""

    def __init__(self) -> None:
        self._log = logging.getLogger(type(self).__module__)  # the backend's logger

    def _lock(self, conn: Conn) -> None:
        """Hold other batches off until this one commits; called before the diff of a batch
        that is not empty. Nothing by default: SQLite has one writer."""

    @abstractmethod
    def _known_characters(self, conn: Conn, ids: Iterable[int]) -> dict[int, StoredCharacter]:
        """The stored rows of the characters among ``ids`` that exist."""

    @abstractmethod
    def _write_characters(
        self, conn: Conn, added: Sequence[Character], changed: Sequence[Character], now: datetime
    ) -> None:
        """Insert ``added`` and overwrite ``changed`` (created_at kept)."""

    @abstractmethod
    def _append(self, conn: Conn, events: Sequence[Event]) -> list[Event]:
        """Append ``events`` in order; returns them with their ``seq``."""

    @abstractmethod
    def _read_data(self, conn: Conn, ids: list[int]) -> dict[int, dict[str, Any]]:
        """The decoded ``data`` of the read rows among ``ids`` that exist."""

    @abstractmethod
    def _write_reads(self, conn: Conn, rows: Sequence[ReadRow]) -> None:
        """Insert or overwrite ``rows`` in ``character_reads``."""

    @abstractmethod
    def _keys_holding(self, conn: Conn, ids: list[int]) -> Iterable[str]:
        """The keys of the cache entries tagged with any of ``ids``."""

    @abstractmethod
    def _keys_between(self, conn: Conn, start: str, stop: str) -> Iterable[str]:
        """The cache keys from ``start`` (included) to ``stop`` (excluded), in byte order."""

    @abstractmethod
    def _delete_keys(self, conn: Conn, keys: list[str]) -> None:
        """Delete the cache entries of ``keys``."""

    @abstractmethod
    def _write_state(self, conn: Conn, values: Mapping[str, Any], now: datetime) -> None: ...

    @abstractmethod
    def _mark_applied(self, conn: Conn, delivery_id: str, now: datetime) -> None:
        """Stamp webhook delivery ``delivery_id`` applied at ``now``."""

    def apply(
        self,
        conn: Conn,
        characters: Iterable[Character],
        *,
        provenance: Provenance,
        now: datetime,
        match_added: bool = True,
        keep_key: str | None = None,
        state: Mapping[str, Any] | None = None,
        delivery_id: str | None = None,
    ) -> BatchResult:
        """Diff ``characters`` (the last occurrence of an id wins) and apply what changed,
        in the caller's transaction.

        ``match_added``: whether additions also invalidate the cached list queries they
        match. Before the first full sync marveld cannot tell a new character from one it
        has not seen yet (and the bulk import sees every one for the first time), so there
        only the entries holding a changed character go. ``keep_key``: a cache entry the
        caller is rewriting in this transaction, never deleted here. ``state``:
        ``sync_state`` rows (key → JSON value) to write. ``delivery_id``: the webhook
        delivery to mark applied.
        """
        latest = {c.id: c for c in characters}
        if latest:
            self._lock(conn)
        changes = self._diff(conn, latest.values())
        events = [event_for(change, provenance, now) for change in changes]
        if changes:
            self._write_characters(
                conn,
                [c.current for c in changes if c.added],
                [c.current for c in changes if not c.added],
                now,
            )
            events = self._append(conn, events)
            self._project(conn, events)
        forgotten = self._invalidate(conn, changes, match_added=match_added, keep_key=keep_key)
        if state:
            self._write_state(conn, state, now)
        if delivery_id is not None:
            self._mark_applied(conn, delivery_id, now)
        added = sum(c.added for c in changes)
        if changes:
            self._log.debug(
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

    def _diff(self, conn: Conn, characters: Collection[Character]) -> list[Change]:
        known = self._known_characters(conn, (c.id for c in characters))
        changes: list[Change] = []
        for character in characters:
            stored = known.get(character.id)
            if stored is not None and stored.content_hash == character.content_hash():
                continue  # identical: decoding the stored copy is not needed
            change = diff(None if stored is None else stored.character(), character)
            if change is not None:
                changes.append(change)
        return changes

    def _project(self, conn: Conn, events: Sequence[Event]) -> None:
        """The read table after ``events`` (in seq order), from the events alone."""
        current = self._read_data(
            conn, [e.data["marvel_id"] for e in events if e.type != CHARACTER_ADDED]
        )
        for event in events:
            marvel_id = event.data["marvel_id"]
            current[marvel_id] = project(current.get(marvel_id), event)
        self._write_reads(
            conn,
            [
                ReadRow(marvel_id, Character.from_json(current[marvel_id]), current[marvel_id])
                for marvel_id in dict.fromkeys(e.data["marvel_id"] for e in events)
            ],
        )

    def _invalidate(
        self,
        conn: Conn,
        changes: Sequence[Change],
        *,
        match_added: bool,
        keep_key: str | None,
    ) -> tuple[str, ...]:
        """Delete the cache entries that hold a changed character or whose list query
        matches one (before or after the change); returns their keys."""
        if not changes:
            return ()
        keys: dict[str, None] = dict.fromkeys(
            self._keys_holding(conn, [c.current.id for c in changes])
        )
        versions: list[Character] = []
        for change in changes:
            if change.previous is not None:
                versions += (change.previous, change.current)
            elif match_added:
                versions.append(change.current)
        names = ChangedNames(versions)
        if names:
            for key in self._keys_between(conn, LIST_KEYS_FROM, LIST_KEYS_TO):
                if key in keys:
                    continue
                try:
                    query = CharacterQuery.from_cache_key(key)
                except ValueError:
                    self._log.debug("cache key %r is not a list query; left alone", key)
                    continue
                if names.touches(query):
                    keys[key] = None
        keys.pop(keep_key or "", None)
        if keys:
            self._delete_keys(conn, list(keys))
        return tuple(keys)


class ChangeRepoBase(Announcing, Generic[Conn]):
    """Applies batches in their own write transaction (see :meth:`Batches.apply`); a
    backend gives its :class:`Batches`."""

    _batches: Batches[Conn]

    def __init__(self, db: Db[Conn]) -> None:
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
        def run(conn: Conn) -> BatchResult:
            result = self._batches.apply(
                conn,
                characters,
                provenance=provenance,
                now=now,
                match_added=match_added,
                state=state,
                delivery_id=delivery_id,
            )
            self._announce(conn, Signal(keys=result.forgotten))
            return result

        return await self._db.write(run)
