"""The ``sync_state`` table, backend-neutral: the keys, and the repository over one
backend's ``read_state``/``write_state`` (marveld/storage/sync_state.py and its
PostgreSQL twin).

The keys change detection uses (the services own their meaning; storage only reads
:data:`BOOTSTRAP` to know whether the first full sync is done):

- ``sync.bootstrap``: the first full sync, ``{"run_id", "next_offset", "started_at",
  "completed_at", "bulk": true, ...}``; its events have correlation id
  ``bootstrap:<run_id>`` and notify nobody.
- ``poll.checkpoint``: ``{"modified_since": ...}``, the newest ``modified`` a sync has seen.
- ``poll.first_page``: ``{"params": ..., "etag": ...}``, the first page of the last poll.
- ``sync.last_completed``: ``{"at": ..., "kind": ...}``, the last sync that ended well.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, Generic

from marveld.storage.twins import Conn, Db

BOOTSTRAP: Final = "sync.bootstrap"
POLL_CHECKPOINT: Final = "poll.checkpoint"
POLL_FIRST_PAGE: Final = "poll.first_page"
LAST_COMPLETED: Final = "sync.last_completed"


def bootstrap_completed(bootstrap: Any) -> bool:
    """Whether a :data:`BOOTSTRAP` value records a first full sync that ended."""
    return isinstance(bootstrap, dict) and bootstrap.get("completed_at") is not None


class SyncStateRepoBase(ABC, Generic[Conn]):
    """Positions of background work, as JSON values by key. A backend gives its
    ``read_state`` and ``write_state``."""

    def __init__(self, db: Db[Conn]) -> None:
        self._db = db

    @abstractmethod
    def _read_state(self, conn: Conn, key: str) -> Any: ...

    @abstractmethod
    def _write_state(self, conn: Conn, values: Mapping[str, Any], now: datetime) -> None: ...

    @abstractmethod
    def _lock_key(self, conn: Conn, key: str) -> None:
        """Hold ``key`` for the rest of the transaction, against every other process on the
        database, even while it has no row yet."""

    async def get_many(self, *keys: str) -> dict[str, Any]:
        """The values of ``keys`` (None for a missing one), read in one snapshot."""

        def select(conn: Conn) -> dict[str, Any]:
            return {key: self._read_state(conn, key) for key in keys}

        return await self._db.read(select, snapshot=True)

    async def get(self, key: str) -> Any:
        return (await self.get_many(key))[key]

    async def put(self, values: Mapping[str, Any], now: datetime) -> None:
        await self._db.write(lambda conn: self._write_state(conn, values, now))

    async def take_one(self, key: str, day: str, limit: int, now: datetime) -> tuple[bool, int]:
        """Count one more use of ``key``'s daily counter ``{"day", "used"}`` unless ``limit``
        are used ``day`` already (a counter of another day starts again at 0), atomically
        for every process on the database: (taken, used after)."""

        def take(conn: Conn) -> tuple[bool, int]:
            self._lock_key(conn, key)
            value = self._read_state(conn, key)
            same_day = isinstance(value, dict) and value.get("day") == day
            used = int(value.get("used", 0)) if same_day else 0
            if used >= limit:
                return False, used
            self._write_state(conn, {key: {"day": day, "used": used + 1}}, now)
            return True, used + 1

        return await self._db.write(take)

    async def first_sync_done(self) -> bool:
        return await self._db.read(
            lambda conn: bootstrap_completed(self._read_state(conn, BOOTSTRAP))
        )
