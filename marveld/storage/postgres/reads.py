"""The read side on PostgreSQL: ``character_reads`` and its ``search`` tsvector (the twin
of marveld/storage/reads.py).

Written only by the projection in ``storage.postgres.changes``; read here (what both
backends share: marveld/storage/reads_base.py). What differs from SQLite, and why:

- a search's terms are tokenized by SQLite's unicode61 tokenizer and matched against the
  tokens the projection stored (marveld/storage/postgres/search.py): PostgreSQL's parser
  would split, fold and match words differently;
- the GIN index on ``search`` finds the rows that hold every token of a term (a tsquery of
  quoted lexemes, the last a prefix: data, never syntax); the hits of each term in each
  row are then counted from the token arrays, which also checks that a term of several
  tokens (FTS5: a phrase) has them in a row;
- the ranking is FTS5's bm25 with the same weights, computed from those counts in Python
  (:func:`marveld.storage.postgres.search.bm25`), then name (``COLLATE "C"``: bytes, as
  SQLite) and id, so both backends return the same characters in the same order;
- bm25's totals (rows, tokens in all rows) are summed over the table at each search
  (FTS5 keeps them in its index): a scan of one small table;
- a row's distinct lexemes must fit PostgreSQL's 1 MB tsvector (SQLite has no such limit).
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from marveld.domain.characters import Character
from marveld.storage.codec import load_json
from marveld.storage.postgres.search import bm25, stored, tokenize, tsquery
from marveld.storage.reads_base import (
    DESCRIPTION_WEIGHT,
    NAME_WEIGHT,
    NOTHING,
    ReadRepoBase,
    SearchResult,
)

__all__ = ["DESCRIPTION_WEIGHT", "NAME_WEIGHT", "PgReadRepo", "SearchResult"]

# Each term (its tokens joined by spaces, which no token holds) with its tsquery; the rows
# the index finds for it; in each, the positions where the term's tokens follow one
# another, the last as a prefix: its hits in the name and in the description.
_HITS = """
SELECT t.n, r.marvel_id, r.name_folded,
       cardinality(r.name_tokens) + cardinality(r.description_tokens),
       h.name_hits, h.description_hits
FROM (
    SELECT n, query, tokens, cardinality(tokens) AS len
    FROM unnest(%s::text[], %s::tsquery[]) WITH ORDINALITY AS u (phrase, query, n),
         LATERAL string_to_array(u.phrase, ' ') AS tokens
) AS t
JOIN character_reads AS r ON r.search @@ t.query
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE c.col = 0), count(*) FILTER (WHERE c.col = 1)
    FROM (VALUES (0, r.name_tokens), (1, r.description_tokens)) AS c (col, tokens),
         LATERAL generate_subscripts(c.tokens, 1) AS k
    WHERE c.tokens[k : k + t.len - 2] = t.tokens[1 : t.len - 1]
      AND starts_with(c.tokens[k + t.len - 1], t.tokens[t.len])
) AS h (name_hits, description_hits)
WHERE h.name_hits + h.description_hits > 0
"""

# What FTS5 keeps as totals: rows, and tokens in all of them.
_TOTALS = """
SELECT count(*), coalesce(sum(cardinality(name_tokens) + cardinality(description_tokens)), 0)
FROM character_reads
"""


class PgReadRepo(ReadRepoBase[psycopg.Connection]):
    """Characters as local queries see them."""

    def _data(self, conn: psycopg.Connection, marvel_id: int) -> str | None:
        row = conn.execute(
            "SELECT data FROM character_reads WHERE marvel_id = %s", (marvel_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def _count(self, conn: psycopg.Connection) -> int:
        row = conn.execute("SELECT count(*) FROM character_reads").fetchone()
        assert row is not None  # an aggregate always returns a row
        return int(row[0])

    async def _search(self, terms: Sequence[str], *, limit: int, offset: int) -> SearchResult:
        # A term with no token (``"``, say) is an empty phrase, which FTS5 leaves out of
        # the query (and of bm25); with nothing left, nothing matches.
        phrases = [stored(tokens) for tokens in tokenize(terms) if tokens]
        if not phrases:
            return NOTHING

        def select(conn: psycopg.Connection) -> SearchResult:
            hits = conn.execute(
                _HITS, ([" ".join(p) for p in phrases], [tsquery(p) for p in phrases])
            ).fetchall()
            term_rows = [0] * len(phrases)
            found: dict[int, tuple[str, int, list[float]]] = {}
            for n, marvel_id, name_folded, length, name_hits, description_hits in hits:
                term_rows[n - 1] += 1
                weighted = found.setdefault(marvel_id, (name_folded, length, [0.0] * len(phrases)))
                weighted[2][n - 1] = name_hits * NAME_WEIGHT + description_hits * DESCRIPTION_WEIGHT
            matches = {k: v for k, v in found.items() if all(v[2])}
            if not matches:
                return NOTHING
            totals = conn.execute(_TOTALS).fetchone()
            assert totals is not None  # an aggregate always returns a row
            rows, tokens = int(totals[0]), int(totals[1])
            ranked = sorted(
                matches,
                key=lambda marvel_id: (
                    bm25(
                        rows=rows,
                        tokens=tokens,
                        term_rows=term_rows,
                        hits=matches[marvel_id][2],
                        length=matches[marvel_id][1],
                    ),
                    matches[marvel_id][0],
                    marvel_id,
                ),
            )
            chosen = ranked[offset : offset + limit]
            data: dict[int, str] = {
                int(marvel_id): text
                for marvel_id, text in conn.execute(
                    "SELECT marvel_id, data FROM character_reads WHERE marvel_id = ANY(%s)",
                    (chosen,),
                ).fetchall()
            }
            characters = tuple(Character.from_json(load_json(data[i])) for i in chosen)
            return SearchResult(characters=characters, total=len(matches))

        return await self._db.read(select, snapshot=True)
