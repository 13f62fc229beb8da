"""Full-text search on PostgreSQL that finds and ranks what SQLite's FTS5 does.

PostgreSQL's text-search parser is not SQLite's unicode61 tokenizer: it keeps
``spider-man`` as a word beside ``spider`` and ``man``, reads ``A.I.M.`` as a host name,
keeps accents, and classes non-ASCII letters by the server's locale. Words would then
match, and counts rank, differently on the two backends. So the words are SQLite's own:
:func:`tokenize` runs the very tokenizer the SQLite schema declares (``unicode61
remove_diacritics 2``, in a private in-memory database; sqlite3 is in the standard
library) and the projection stores the tokens in ``character_reads.name_tokens`` and
``description_tokens``; the generated ``search`` tsvector over them is what the GIN index
holds. A query term is tokenized the same way and becomes a :func:`tsquery` of prefix
lexemes, built as data (each lexeme quoted), never from the raw text.

The ranking is FTS5's ``bm25()`` (ext/fts5/fts5_aux.c), computed in :func:`bm25` from the
same counts FTS5 keeps: rows, tokens in all rows, rows that hold each term, and each
row's weighted hits and length.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from contextlib import closing

# As the SQLite schema's character_search (marveld/storage/schema.py).
TOKENIZE = "unicode61 remove_diacritics 2"

# A tsvector lexeme holds at most 2047 bytes: stored tokens keep their first 500 characters
# (2000 bytes at most). A prefix of 500 characters or fewer (a search's whole text is at
# most 256) matches a token exactly when it matches those 500, so no answer changes.
TOKEN_CHARS = 500

# bm25's constants, as in fts5_aux.c.
K1 = 1.2
B = 0.75


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """The tokens SQLite's FTS5 makes of each text (folded: lower case, no diacritics),
    in order, as its index holds them."""
    if not texts:
        return []
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute(f"CREATE VIRTUAL TABLE words USING fts5 (text, tokenize = '{TOKENIZE}')")
        conn.execute("CREATE VIRTUAL TABLE instances USING fts5vocab (words, 'instance')")
        conn.executemany(
            "INSERT INTO words (rowid, text) VALUES (?, ?)", list(enumerate(texts, start=1))
        )
        found: list[list[str]] = [[] for _ in texts]
        for doc, term in conn.execute("SELECT doc, term FROM instances ORDER BY doc, offset"):
            found[doc - 1].append(str(term))
    return found


def stored(tokens: Sequence[str]) -> list[str]:
    """Tokens as ``character_reads`` stores them (see :data:`TOKEN_CHARS`)."""
    return [token[:TOKEN_CHARS] for token in tokens]


def _lexeme(token: str) -> str:
    return "'" + token.replace("\\", "\\\\").replace("'", "''") + "'"


def tsquery(phrase: Sequence[str]) -> str:
    """The tsquery (text form, for a ``::tsquery`` parameter) of the rows that can hold
    ``phrase``, the tokens of one search term: every token, the last one as a prefix, as
    FTS5 reads ``"term"*``. The ``search`` vector has no positions: that the tokens are
    consecutive is checked by counting hits (reads.py)."""
    *exact, last = phrase
    return " & ".join([*map(_lexeme, exact), _lexeme(last) + ":*"])


def bm25(
    *,
    rows: int,
    tokens: int,
    term_rows: Sequence[int],
    hits: Sequence[float],
    length: int,
) -> float:
    """FTS5's ``bm25()`` of one row, operation for operation (the same doubles, so ties
    stay ties): ``rows`` in the table, ``tokens`` in all of them, ``term_rows[i]`` rows
    holding term i, ``hits[i]`` its weighted hits in this row, ``length`` the row's
    tokens. Lower is better, as in SQLite."""
    avgdl = float(tokens) / float(rows)
    score = 0.0
    for n_hit, freq in zip(term_rows, hits, strict=True):
        idf = math.log((rows - n_hit + 0.5) / (n_hit + 0.5))
        if idf <= 0.0:
            idf = 1e-6
        score += idf * ((freq * (K1 + 1.0)) / (freq + K1 * (1 - B + B * float(length) / avgdl)))
    return -1.0 * score
