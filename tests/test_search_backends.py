"""Local search finds the same characters in the same order on SQLite (FTS5, bm25) and on
PostgreSQL (the tsvector of SQLite's tokens, the same bm25): the recorded slice of real
Marvel data loaded into both, then searches compared result for result, page by page.

The read table's name and time columns are compared too: a name prefix (the
``nameStartsWith`` of a list) over ``name_folded`` and ``modifiedSince`` over
``modified_at`` select and order the same rows on both.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from marveld.domain.changes import Provenance
from marveld.domain.characters import Character
from marveld.domain.queries import SearchQuery, fold_name
from marveld.storage import Store
from marveld.storage.codec import time_to_text
from marveld.storage.postgres.search import tokenize
from tests.conftest import RECORDED_SLICE
from tests.stores import is_postgres, rows
from tests.test_storage import T0

BOOTSTRAP = Provenance(source="bootstrap", correlation_id="bootstrap:run-1")

SEARCHES = [
    "spider",
    "Spider-Man",
    "spider man",  # two terms, in a name
    "man spider",  # the same terms the other way round
    "peter parker",
    "Spíder-Mán",  # accents: unicode61 drops them, from the text and from the terms
    "ÍRON",
    "jean grey",  # the one name that occurs twice
    "a.i.m.",
    "3-d",
    "2099",
    "1602",
    "ara",  # Araٌa: the combining mark splits the word
    "Araٌa",
    "s",  # one letter: most of the slice, and many ties
    "the",  # in most descriptions: the IDF floor
    "bitten radioactive",
    "spi wom",  # prefixes of two words
    "iron f",
    "zzz",
    "nobody",
    # U+19B0 is a letter to Python (one term) but not to SQLite's tokenizer (two tokens):
    # FTS5 matches the term as a phrase, "spider" then a word starting "man".
    "spider\u19b0man",
    "man\u19b0spider",
    "\u19b0 spider",  # a term with no token at all: FTS5 leaves it out
    "\u19b0",
]


def slice_characters() -> list[Character]:
    return [Character.from_marvel(raw) for raw in json.loads(RECORDED_SLICE.read_text())]


@pytest.fixture
async def both(tmp_path: Path, postgres_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """The slice in a SQLite store and in a PostgreSQL one, applied the same way."""
    characters = slice_characters()
    async with (
        Store.open(tmp_path / "marveld.sqlite3") as sqlite,
        Store.open_url(postgres_url) as postgres,
    ):
        for store in (sqlite, postgres):
            # two batches, so that the second updates part of what the first added
            await store.changes.apply(characters[::2], provenance=BOOTSTRAP, now=T0)
            await store.changes.apply(characters, provenance=BOOTSTRAP, now=T0)
        yield sqlite, postgres


async def found(store: Store, text: str, limit: int = 100, offset: int = 0) -> tuple[Any, ...]:
    query = SearchQuery.parse(text, limit, offset)
    result = await store.reads.search(query.terms, limit=query.limit, offset=query.offset)
    return result.total, [(c.id, c.name) for c in result.characters]


async def test_the_slice_is_loaded_alike(both: tuple[Store, Store]) -> None:
    sqlite, postgres = both
    assert await sqlite.reads.count() == await postgres.reads.count() == 40
    for marvel_id in (1009610, 1017438, 1010752):
        assert await sqlite.reads.get(marvel_id) == await postgres.reads.get(marvel_id)


@pytest.mark.parametrize("text", SEARCHES)
async def test_searches_find_the_same_in_the_same_order(
    both: tuple[Store, Store], text: str
) -> None:
    sqlite, postgres = both
    expected = await found(sqlite, text)
    assert await found(postgres, text) == expected


async def test_the_searches_are_not_trivial(both: tuple[Store, Store]) -> None:
    """What the comparisons above compare: ranked lists, not empty ones."""
    sqlite, _ = both
    total, spiders = await found(sqlite, "spider")
    assert total == 21
    assert spiders[0][1].startswith("Spider")
    assert (await found(sqlite, "Spíder-Mán"))[1] == (await found(sqlite, "spider man"))[1]
    assert (await found(sqlite, "jean grey"))[1] == [(1009327, "Jean Grey"), (1009496, "Jean Grey")]
    assert (await found(sqlite, "ara"))[0] == 1
    if tokenize(["\u19b0"]) == [[]]:  # as SQLite's Unicode tables have it so far
        assert (await found(sqlite, "spider\u19b0man"))[0] > 0
        assert (await found(sqlite, "man\u19b0spider"))[0] == 0
    assert (await found(sqlite, "s"))[0] >= 25


@pytest.mark.parametrize("text", ["spider", "s", "man", "the"])
async def test_pages_are_the_same(both: tuple[Store, Store], text: str) -> None:
    sqlite, postgres = both
    total, everything = await found(sqlite, text)
    pages = []
    for offset in range(0, total + 3, 3):
        page = await found(postgres, text, limit=3, offset=offset)
        assert page == await found(sqlite, text, limit=3, offset=offset)
        pages += page[1]
    assert pages == everything


@pytest.mark.parametrize("prefix", ["spider", "Spider-Man (", "iron", "jean", "a", "3-", "pug"])
async def test_name_prefixes_select_and_order_alike(both: tuple[Store, Store], prefix: str) -> None:
    """A ``nameStartsWith`` over the folded names: the same rows in the same (byte) order."""
    sqlite, postgres = both
    sql = (
        "SELECT marvel_id, name_folded FROM character_reads"
        " WHERE substr(name_folded, 1, ?) = ? ORDER BY name_folded, marvel_id"
    )
    folded = fold_name(prefix)
    expected = await rows(sqlite, sql, len(folded), folded)
    assert expected
    assert await rows(postgres, sql, len(folded), folded) == expected


@pytest.mark.parametrize(
    "since", [datetime(2016, 1, 1, tzinfo=UTC), datetime(2014, 3, 5, 18, 50, 37, tzinfo=UTC)]
)
async def test_modified_since_selects_and_orders_alike(
    both: tuple[Store, Store], since: datetime
) -> None:
    """A ``modifiedSince`` over ``modified_at`` (placeholder dates are NULL: never after)."""

    async def modified(store: Store) -> list[tuple[Any, ...]]:
        stamp = since if is_postgres(store) else time_to_text(since)
        return await rows(
            store,
            "SELECT marvel_id FROM character_reads WHERE modified_at >= ?"
            " ORDER BY modified_at, marvel_id",
            stamp,
        )

    sqlite, postgres = both
    expected = await modified(sqlite)
    assert expected
    assert await modified(postgres) == expected
