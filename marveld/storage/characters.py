"""The ``characters`` table: the write side, current state of each character (what both
backends share: marveld/storage/characters_base.py)."""

from __future__ import annotations

import sqlite3

from marveld.storage.changes import BATCHES
from marveld.storage.characters_base import DIRECT, CharacterRepoBase

__all__ = ["DIRECT", "CharacterRepo"]


class CharacterRepo(CharacterRepoBase[sqlite3.Connection]):
    """Current state of the characters marveld has seen."""

    _batches = BATCHES

    def _data(self, conn: sqlite3.Connection, marvel_id: int) -> str | None:
        row = conn.execute(
            "SELECT data FROM characters WHERE marvel_id = ?", (marvel_id,)
        ).fetchone()
        return None if row is None else str(row["data"])
