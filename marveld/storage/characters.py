"""The ``characters`` table: the write side, current state of each character."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from marveld.domain.characters import Character
from marveld.storage.codec import dump_json, load_json, time_to_text
from marveld.storage.database import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CharacterChange:
    """A character :func:`upsert_characters` inserted (``added``) or changed."""

    character: Character
    added: bool


def upsert_characters(
    conn: sqlite3.Connection, characters: Sequence[Character], now: datetime
) -> list[CharacterChange]:
    """Insert new characters, update changed ones (by content hash), leave identical ones
    untouched. Runs inside the caller's write transaction, so other storage code (a cache
    put, a sync) can make it part of one transaction. When an id occurs twice, the last
    occurrence wins. Returns what changed, in input order.
    """
    latest = {c.id: c for c in characters}
    if not latest:
        return []
    stamp = time_to_text(now)
    known: dict[int, str] = {
        row["marvel_id"]: row["content_hash"]
        for row in conn.execute(
            "SELECT marvel_id, content_hash FROM characters"
            " WHERE marvel_id IN (SELECT value FROM json_each(?))",
            (dump_json(list(latest)),),
        )
    }
    changes: list[CharacterChange] = []
    for character in latest.values():
        digest = character.content_hash()
        previous = known.get(character.id)
        if previous == digest:
            continue
        values = (
            character.name,
            character.description,
            character.image_url,
            character.modified_raw,
            digest,
            dump_json(character.to_json()),
        )
        if previous is None:
            conn.execute(
                "INSERT INTO characters (id, marvel_id, name, description, image_url, modified,"
                " content_hash, data, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (str(uuid.uuid4()), character.id, *values, stamp, stamp),
            )
        else:
            conn.execute(
                "UPDATE characters SET name = ?, description = ?, image_url = ?, modified = ?,"
                " content_hash = ?, data = ?, updated_at = ? WHERE marvel_id = ?",
                (*values, stamp, character.id),
            )
        changes.append(CharacterChange(character=character, added=previous is None))
    return changes


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
        """Insert new, update changed, skip identical (updated_at kept). Returns how many
        rows changed."""
        if not characters:
            return 0
        changes = await self._db.write(lambda conn: upsert_characters(conn, characters, now))
        if changes:
            log.debug("characters: %d of %d changed", len(changes), len(characters))
        return len(changes)
