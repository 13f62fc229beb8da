"""The ``cache`` table, backend-neutral: the stored entry, its decoding, and the
repository whose statements each backend writes (marveld/storage/cache.py and its
PostgreSQL twin).

The page cache's persistent tier, tagged by character id. Storing a page runs the
backend's change pipeline first, in the same transaction, so the memory tier can drop
the OTHER keys it invalidated.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic

from marveld.domain.changes import Provenance
from marveld.domain.characters import CharacterPage
from marveld.storage.changes_base import Batches
from marveld.storage.codec import dump_json, load_json
from marveld.storage.coordination import Announcing, Signal
from marveld.storage.twins import Conn, Db, utc

# The columns an entry is read from, in the order :func:`cache_entry` takes them.
COLUMNS = "cache_key, characters, etag, character_ids, created_at, expires_at, body_fetched_at"


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


def cache_entry(
    row: Iterable[Any],
    *,
    to_time: Callable[[Any], datetime],
    to_ids: Callable[[Any], Iterable[int]],
) -> CacheEntry:
    """The entry of a row of :data:`COLUMNS`, with the backend's time and id-list
    decoding. A row from before ``body_fetched_at`` existed counts from ``created_at``."""
    key, characters, etag, character_ids, created_at, expires_at, body_fetched_at = row
    return CacheEntry(
        key=key,
        page=CharacterPage.from_json(load_json(characters)),
        created_at=to_time(created_at),
        expires_at=to_time(expires_at),
        etag=etag,
        character_ids=tuple(to_ids(character_ids)),
        body_fetched_at=to_time(body_fetched_at or created_at),
    )


@dataclass(frozen=True, slots=True)
class CacheRow:
    """What :meth:`CacheRepoBase.put` writes to the ``cache`` row of ``key``, before the
    backend's value conversions (``body`` is the page's JSON text; ``created_at`` is also
    the row's ``updated_at``)."""

    key: str
    body: str
    etag: str | None
    character_ids: list[int]
    created_at: datetime
    expires_at: datetime
    body_fetched_at: datetime


class CacheRepoBase(Announcing, ABC, Generic[Conn]):
    """Pages by normalized cache key. Expiry is data: :meth:`get` returns expired entries
    too, and the cache policy decides what to do with them.

    A backend gives its change pipeline (``_batches``, ``_first_sync_done``) and its
    statements; times reach them in UTC (:func:`~marveld.storage.twins.utc`)."""

    _batches: Batches[Conn]
    _leases = False  # whether other processes may fill the same keys (fill leases)

    def __init__(self, db: Db[Conn]) -> None:
        self._db = db
        self._log = logging.getLogger(type(self).__module__)  # the backend's logger

    def _claim(self, conn: Conn, key: str, until: datetime, now: datetime) -> datetime | None:
        """Take the fill lease of ``key`` until ``until``, unless another process holds it
        past ``now``: None when taken, else when the holder's lease ends."""
        raise NotImplementedError

    def _release(self, conn: Conn, key: str) -> None:
        """Drop the fill lease of ``key``, whoever holds it."""
        raise NotImplementedError

    @abstractmethod
    def _first_sync_done(self, conn: Conn) -> bool: ...

    @abstractmethod
    def _select(self, conn: Conn, key: str) -> CacheEntry | None: ...

    @abstractmethod
    def _upsert(self, conn: Conn, row: CacheRow) -> int:
        """Insert or refresh ``row`` under its key; its id."""

    @abstractmethod
    def _retag(self, conn: Conn, cache_id: int, ids: list[int]) -> None:
        """Replace the character tags of row ``cache_id`` with ``ids``."""

    @abstractmethod
    def _delete_expired(self, conn: Conn, now: datetime) -> int: ...

    @abstractmethod
    def _delete(self, conn: Conn, key: str) -> int: ...

    @abstractmethod
    def _delete_tagged(self, conn: Conn, marvel_id: int, key: str) -> list[str]:
        """Delete the rows tagged with ``marvel_id`` and the one under ``key``; their keys."""

    @abstractmethod
    def _clear(self, conn: Conn) -> int: ...

    @abstractmethod
    def _count(self, conn: Conn) -> int: ...

    async def get(self, key: str) -> CacheEntry | None:
        return await self._db.read(lambda conn: self._select(conn, key))

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
        stamp, expires = utc(now), utc(expires_at)
        fetched = utc(fetched_at or now)
        ids = list(dict.fromkeys(c.id for c in page.characters))
        row = CacheRow(key, dump_json(page.to_json()), page.etag, ids, stamp, expires, fetched)
        cause = f"read-through:{key}"
        provenance = Provenance(source="read_through", correlation_id=cause, causation_id=cause)

        def upsert(conn: Conn) -> tuple[str, ...]:
            # Before the first full sync a character seen for the first time may be an old
            # one: only entries that hold a changed character are invalidated then.
            result = self._batches.apply(
                conn,
                page.characters,
                provenance=provenance,
                now=now,
                match_added=self._first_sync_done(conn),
                keep_key=key,
            )
            cache_id = self._upsert(conn, row)
            self._retag(conn, cache_id, ids)
            if self._leases:
                self._release(conn, key)  # filled: nobody need wait for it any more
            self._announce(conn, Signal(keys=(key, *result.forgotten)))  # other replicas' copies
            return result.forgotten

        return await self._db.write(upsert)

    async def claim_fill(self, key: str, *, now: datetime, seconds: float) -> datetime | None:
        """Before asking the upstream for ``key``: None when this process may (it holds the
        key's fill lease for ``seconds``, or no other process can fill keys: SQLite), else
        when the lease of the process filling it ends. Storing the key releases it."""
        if not self._leases:
            return None
        stamp = utc(now)
        until = stamp + timedelta(seconds=seconds)
        return await self._db.write(lambda conn: self._claim(conn, key, until, stamp))

    async def release_fill(self, key: str) -> None:
        """Give the fill lease of ``key`` up (the upstream call failed)."""
        if self._leases:
            await self._db.write(lambda conn: self._release(conn, key))

    async def delete_expired(self, now: datetime) -> int:
        """Remove entries with ``expires_at <= now``; returns how many."""
        stamp = utc(now)
        removed = await self._db.write(lambda conn: self._delete_expired(conn, stamp))
        if removed:
            self._log.debug("cache: %d expired entries removed", removed)
        return removed

    async def delete(self, key: str) -> bool:
        def delete(conn: Conn) -> int:
            self._announce(conn, Signal(keys=(key,)))
            return self._delete(conn, key)

        return await self._db.write(delete) > 0

    async def delete_for_character(self, marvel_id: int) -> list[str]:
        """Remove every entry that holds the character; returns their keys."""
        key = f"characters/{marvel_id}"

        def delete(conn: Conn) -> list[str]:
            keys = self._delete_tagged(conn, marvel_id, key)
            self._announce(conn, Signal(keys=(key, *keys)))
            return keys

        return sorted(await self._db.write(delete))

    async def clear(self) -> int:
        """Remove every entry; returns how many."""

        def clear(conn: Conn) -> int:
            self._announce(conn, Signal(every_key=True))
            return self._clear(conn)

        return await self._db.write(clear)

    async def count(self) -> int:
        return await self._db.read(self._count)
