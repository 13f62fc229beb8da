"""The read side: ``character_reads`` and its FTS5 index ``character_search``.

Written only by the projection in ``storage.changes``; read here. A search's terms are
always data: each becomes a quoted FTS5 string (a ``"`` inside doubled) with a prefix
``*`` outside the quotes, so ``AND``, ``NEAR(``, ``*`` or quotes in a user's text never
reach the FTS5 query parser as syntax.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from marveld.domain.characters import Character
from marveld.storage.codec import load_json
from marveld.storage.database import Database

# Name hits count more than description hits (bm25 weights, in column order).
NAME_WEIGHT = 10.0
DESCRIPTION_WEIGHT = 1.0


def fts_match(terms: Sequence[str]) -> str:
    """An FTS5 MATCH expression: every term, as a prefix, anywhere in name or description."""
    return " ".join('"' + term.replace('"', '""') + '"*' for term in terms)


@dataclass(frozen=True, slots=True)
class SearchResult:
    characters: tuple[Character, ...]
    total: int


class ReadRepo:
    """Characters as local queries see them."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, marvel_id: int) -> Character | None:
        def select(conn: sqlite3.Connection) -> Character | None:
            row = conn.execute(
                "SELECT data FROM character_reads WHERE marvel_id = ?", (marvel_id,)
            ).fetchone()
            return None if row is None else Character.from_json(load_json(row[0]))

        return await self._db.read(select)

    async def search(self, terms: Sequence[str], *, limit: int, offset: int) -> SearchResult:
        """Characters whose name or description has every term (as a word prefix), best
        first (bm25, name hits weighing more), then by name. No terms: nothing."""
        if not terms:
            return SearchResult(characters=(), total=0)
        match = fts_match(terms)

        def select(conn: sqlite3.Connection) -> SearchResult:
            total = conn.execute(
                "SELECT count(*) FROM character_search WHERE character_search MATCH ?", (match,)
            ).fetchone()[0]
            rows = conn.execute(
                "SELECT r.data FROM character_search"
                " JOIN character_reads AS r ON r.marvel_id = character_search.rowid"
                " WHERE character_search MATCH ?"
                " ORDER BY bm25(character_search, ?, ?), r.name_folded, r.marvel_id"
                " LIMIT ? OFFSET ?",
                (match, NAME_WEIGHT, DESCRIPTION_WEIGHT, limit, offset),
            ).fetchall()
            found = tuple(Character.from_json(load_json(row[0])) for row in rows)
            return SearchResult(characters=found, total=int(total))

        return await self._db.read(select, snapshot=True)

    async def count(self) -> int:
        def select(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM character_reads").fetchone()[0])

        return await self._db.read(select)
