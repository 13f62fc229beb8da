"""The ``characters`` table, backend-neutral: the repository whose statements each backend
writes (marveld/storage/characters.py and its PostgreSQL twin)."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import Generic

from marveld.domain.changes import Provenance
from marveld.domain.characters import Character
from marveld.storage.changes_base import Batches
from marveld.storage.codec import load_json
from marveld.storage.twins import Conn, Db

DIRECT = Provenance(source="direct", correlation_id="direct")


def decoded(data: str | None) -> Character | None:
    """The character of a stored ``data`` column; None for no row."""
    return None if data is None else Character.from_json(load_json(data))


class CharacterRepoBase(ABC, Generic[Conn]):
    """Current state of the characters marveld has seen. A backend gives its
    :class:`~marveld.storage.changes_base.Batches` and the select of one row's ``data``."""

    _batches: Batches[Conn]

    def __init__(self, db: Db[Conn]) -> None:
        self._db = db
        self._log = logging.getLogger(type(self).__module__)  # the backend's logger

    @abstractmethod
    def _data(self, conn: Conn, marvel_id: int) -> str | None:
        """The ``data`` column of the ``characters`` row of ``marvel_id``, if any."""

    async def get(self, marvel_id: int) -> Character | None:
        return await self._db.read(lambda conn: decoded(self._data(conn, marvel_id)))

    async def upsert_many(self, characters: Sequence[Character], now: datetime) -> int:
        """Insert new, update changed, skip identical (updated_at kept), through the same
        diff as every other write (events, read table, cache invalidation; correlation id
        ``direct``). Returns how many rows changed. Upstream data goes through
        ``store.changes`` instead, with its provenance."""
        if not characters:
            return 0
        result = await self._db.write(
            lambda conn: self._batches.apply(conn, characters, provenance=DIRECT, now=now)
        )
        if result.changed:
            self._log.debug("characters: %d of %d changed", result.changed, len(characters))
        return result.changed
