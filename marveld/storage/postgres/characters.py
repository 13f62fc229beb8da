"""The ``characters`` table on PostgreSQL (the twin of marveld/storage/characters.py; what
both share: marveld/storage/characters_base.py).

What differs from SQLite: nothing but the driver (``%s`` placeholders, tuples for rows);
writes go through :func:`marveld.storage.postgres.changes.apply_changes`.
"""

from __future__ import annotations

import psycopg

from marveld.storage.characters_base import DIRECT, CharacterRepoBase
from marveld.storage.postgres.changes import BATCHES

__all__ = ["DIRECT", "PgCharacterRepo"]


class PgCharacterRepo(CharacterRepoBase[psycopg.Connection]):
    """Current state of the characters marveld has seen."""

    _batches = BATCHES

    def _data(self, conn: psycopg.Connection, marvel_id: int) -> str | None:
        row = conn.execute(
            "SELECT data FROM characters WHERE marvel_id = %s", (marvel_id,)
        ).fetchone()
        return None if row is None else str(row[0])
