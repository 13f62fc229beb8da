"""The event log on PostgreSQL: append in commit order, read by cursor.

SQLite has one writer, so its AUTOINCREMENT values are handed out in commit order. A
PostgreSQL identity is not: two transactions take seq 10 and 11, the second commits
first, a reader that follows the log by cursor sees 11, moves its cursor past 10 and never
sees it. :func:`append` therefore takes the transaction-scoped advisory lock
:data:`~marveld.storage.postgres.schema.EVENT_LOCK` before it inserts: appends are one at a
time until their transactions end, so sequence order is commit order (tests/
test_postgres_storage.py: 8 writers, 10,000 events, a reader sees each once, in order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import psycopg

from marveld.domain.changes import Event
from marveld.storage.codec import dump_json, load_json
from marveld.storage.postgres.schema import EVENT_LOCK

_INSERT = """
INSERT INTO events (id, stream_id, causation_id, correlation_id, type, created_at,
                    occurred_at, data)
SELECT id, stream_id, causation_id, correlation_id, type, created_at, occurred_at, data
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                     %s::timestamptz[], %s::timestamptz[], %s::text[])
    WITH ORDINALITY AS e (id, stream_id, causation_id, correlation_id, type, created_at,
                          occurred_at, data, n)
ORDER BY n
RETURNING seq
"""


def append(conn: psycopg.Connection, events: Sequence[Event]) -> list[Event]:
    """Append ``events`` in order, inside the caller's transaction; returns them with
    their ``seq``. Holds :data:`EVENT_LOCK` until that transaction ends."""
    if not events:
        return []
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENT_LOCK,))
    columns = (
        [e.id for e in events],
        [e.stream_id for e in events],
        [e.causation_id for e in events],
        [e.correlation_id for e in events],
        [e.type for e in events],
        [e.created_at for e in events],
        [e.occurred_at for e in events],
        [dump_json(e.data) for e in events],
    )
    cur = conn.execute(_INSERT, columns)
    seqs = sorted(int(row[0]) for row in cur.fetchall())
    return [dataclasses.replace(e, seq=seq) for e, seq in zip(events, seqs, strict=True)]


def after(conn: psycopg.Connection, seq: int, limit: int) -> list[Event]:
    """Up to ``limit`` events with a seq above ``seq``, in seq order."""
    rows = conn.execute(
        "SELECT seq, id, stream_id, type, correlation_id, causation_id, occurred_at,"
        " created_at, data FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
        (seq, limit),
    ).fetchall()
    return [
        Event(
            seq=int(r[0]),
            id=r[1],
            stream_id=r[2],
            type=r[3],
            correlation_id=r[4],
            causation_id=r[5],
            occurred_at=r[6],
            created_at=r[7],
            data=load_json(r[8]),
        )
        for r in rows
    ]
