"""The read side: ``character_reads`` and its FTS5 index ``character_search``.

Written only by the projection in ``storage.changes``; read here (what both backends
share: marveld/storage/reads_base.py). A search's terms are always data: each becomes a
quoted FTS5 string (a ``"`` inside doubled) with a prefix ``*`` outside the quotes, so
``AND``, ``NEAR(``, ``*`` or quotes in a user's text never reach the FTS5 query parser
as syntax.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from marveld.domain.characters import Character
from marveld.storage.codec import load_json
from marveld.storage.reads_base import (
    DESCRIPTION_WEIGHT,
    NAME_WEIGHT,
    ReadRepoBase,
    SearchResult,
)

__all__ = ["DESCRIPTION_WEIGHT", "NAME_WEIGHT", "ReadRepo", "SearchResult", "fts_match"]


def fts_match(terms: Sequence[str]) -> str:
    """An FTS5 MATCH expression: every term, as a prefix, anywhere in name or description."""
    return " ".join('"' + term.replace('"', '""') + '"*' for term in terms)


class ReadRepo(ReadRepoBase[sqlite3.Connection]):
    """Characters as local queries see them."""

    def _data(self, conn: sqlite3.Connection, marvel_id: int) -> str | None:
        row = conn.execute(
            "SELECT data FROM character_reads WHERE marvel_id = ?", (marvel_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def _count(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM character_reads").fetchone()[0])

    async def _search(self, terms: Sequence[str], *, limit: int, offset: int) -> SearchResult:
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
