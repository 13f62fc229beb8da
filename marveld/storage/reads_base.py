"""The read side, backend-neutral: the search result and the repository whose statements
each backend writes (marveld/storage/reads.py and its PostgreSQL twin)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic

from marveld.domain.characters import Character
from marveld.storage.characters_base import decoded
from marveld.storage.twins import Conn, Db

# Name hits count more than description hits (bm25 weights, in column order).
NAME_WEIGHT = 10.0
DESCRIPTION_WEIGHT = 1.0


@dataclass(frozen=True, slots=True)
class SearchResult:
    characters: tuple[Character, ...]
    total: int


NOTHING = SearchResult(characters=(), total=0)


class ReadRepoBase(ABC, Generic[Conn]):
    """Characters as local queries see them. A backend gives the select of one row's
    ``data``, the count, and its search."""

    def __init__(self, db: Db[Conn]) -> None:
        self._db = db

    @abstractmethod
    def _data(self, conn: Conn, marvel_id: int) -> str | None:
        """The ``data`` column of the ``character_reads`` row of ``marvel_id``, if any."""

    @abstractmethod
    def _count(self, conn: Conn) -> int: ...

    @abstractmethod
    async def _search(self, terms: Sequence[str], *, limit: int, offset: int) -> SearchResult:
        """:meth:`search` for at least one term."""

    async def get(self, marvel_id: int) -> Character | None:
        return await self._db.read(lambda conn: decoded(self._data(conn, marvel_id)))

    async def search(self, terms: Sequence[str], *, limit: int, offset: int) -> SearchResult:
        """Characters whose name or description has every term (as a word prefix), best
        first (bm25, name hits weighing more), then by name. No terms: nothing."""
        if not terms:
            return NOTHING
        return await self._search(terms, limit=limit, offset=offset)

    async def count(self) -> int:
        return await self._db.read(self._count)
