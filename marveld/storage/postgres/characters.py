"""The ``characters`` table on PostgreSQL (the twin of marveld/storage/characters.py).

What differs from SQLite: nothing but the driver (``%s`` placeholders, tuples for rows);
writes go through :func:`marveld.storage.postgres.changes.apply_changes`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import psycopg

from marveld.domain.characters import Character
from marveld.storage.characters import DIRECT
from marveld.storage.codec import load_json
from marveld.storage.postgres.changes import apply_changes
from marveld.storage.postgres.database import PgDatabase

log = logging.getLogger(__name__)

__all__ = ["DIRECT", "PgCharacterRepo"]


class PgCharacterRepo:
    """Current state of the characters marveld has seen."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def get(self, marvel_id: int) -> Character | None:
        def select(conn: psycopg.Connection) -> Character | None:
            row = conn.execute(
                "SELECT data FROM characters WHERE marvel_id = %s", (marvel_id,)
            ).fetchone()
            return None if row is None else Character.from_json(load_json(row[0]))

        return await self._db.read(select)

    async def upsert_many(self, characters: Sequence[Character], now: datetime) -> int:
        """Insert new, update changed, skip identical (updated_at kept), through the same
        diff as every other write (events, read table, cache invalidation; correlation id
        ``direct``). Returns how many rows changed. Upstream data goes through
        ``store.changes`` instead, with its provenance."""
        if not characters:
            return 0
        result = await self._db.write(
            lambda conn: apply_changes(conn, characters, provenance=DIRECT, now=now)
        )
        if result.changed:
            log.debug("characters: %d of %d changed", result.changed, len(characters))
        return result.changed
