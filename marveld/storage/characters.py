"""The ``characters`` table: the write side, current state of each character."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from datetime import datetime

from marveld.domain.changes import Provenance
from marveld.domain.characters import Character
from marveld.storage.changes import apply_changes
from marveld.storage.codec import load_json
from marveld.storage.database import Database

log = logging.getLogger(__name__)

DIRECT = Provenance(source="direct", correlation_id="direct")


class CharacterRepo:
    """Current state of the characters marveld has seen."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, marvel_id: int) -> Character | None:
        def select(conn: sqlite3.Connection) -> Character | None:
            row = conn.execute(
                "SELECT data FROM characters WHERE marvel_id = ?", (marvel_id,)
            ).fetchone()
            return None if row is None else Character.from_json(load_json(row["data"]))

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
