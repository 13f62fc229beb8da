"""Copy a SQLite marveld database into an empty PostgreSQL one (``marveld db copy``).

The source is opened read-only (``mode=ro``: nothing can write it; ``immutable`` as well
when it has no write-ahead log, so that no ``-wal``/``-shm`` file is left beside it) and
read in one read transaction, so the copy is of one consistent moment; it must be at the
latest SQLite schema (:data:`marveld.storage.schema.LATEST_VERSION`), which marveld brings
it to at start. The target is migrated as at start (:meth:`PgDatabase.open`) and must be
empty (no users, events or characters). Everything is written in ONE PostgreSQL
transaction, with every copied table locked: after the rows, the row counts of each table
are compared with the source's, and any difference rolls the whole copy back.

What is copied, row for row, keys and values unchanged: :data:`COPIED`. In particular
events keep their ``seq`` (inserted ``OVERRIDING SYSTEM VALUE``; the identity then
continues past the highest seq SQLite ever handed out), so notification cursors, the
notifier's ``notify.position`` and every sync checkpoint in ``sync_state`` mean the same
on the target. Read rows get their search tokens as the projection writes them
(:func:`marveld.storage.postgres.search.tokenize`). The cache (:data:`SKIPPED`) is not
copied: it refills from the upstream.

What differs from the SQLite rows, and why (the target schema's translations):

- times are parsed from SQLite's fixed-format text into ``timestamptz``;
- the JSON arrays of ids (subscriptions' ``character_ids``, deliveries' ``ids``) become
  ``bigint[]``; JSON documents stay the same text, byte for byte.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import trio

from marveld.storage.codec import load_json, optional_text_to_time
from marveld.storage.errors import StorageError
from marveld.storage.postgres.database import PgDatabase
from marveld.storage.postgres.schema import EVENT_LOCK, NOTIFY_LOCK
from marveld.storage.postgres.search import stored, tokenize
from marveld.storage.schema import LATEST_VERSION, user_version

log = logging.getLogger(__name__)

BATCH = 1000  # rows read from SQLite and written to PostgreSQL at a time

Convert = Callable[[Any], Any]


def _ids(text: str) -> list[int]:
    return [int(i) for i in load_json(text)]


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]
    convert: dict[str, Convert]  # column → SQLite value to PostgreSQL value
    order: str  # ORDER BY of the source rows (foreign keys: events before what cites them)


_TIME = optional_text_to_time


def _table(name: str, columns: str, order: str, **convert: Convert) -> _Table:
    return _Table(name, tuple(columns.split()), convert, order)


# In foreign-key order. character_reads is written by _copy_reads (its search tokens).
_TABLES: tuple[_Table, ...] = (
    _table(
        "users",
        "id name email password role created_at updated_at deleted_at",
        "created_at, id",
        created_at=_TIME,
        updated_at=_TIME,
        deleted_at=_TIME,
    ),
    _table(
        "characters",
        "id marvel_id name description image_url modified content_hash data created_at updated_at",
        "marvel_id",
        created_at=_TIME,
        updated_at=_TIME,
    ),
    _table(
        "events",
        "seq id stream_id causation_id correlation_id type created_at occurred_at data",
        "seq",
        created_at=_TIME,
        occurred_at=_TIME,
    ),
    _table(
        "character_reads",
        "marvel_id name name_folded description image_url modified_at data",
        "marvel_id",
        modified_at=_TIME,
    ),
    _table(
        "notification_subscriptions",
        "user_id character_ids name_prefix updated_at",
        "user_id",
        character_ids=_ids,
        updated_at=_TIME,
    ),
    _table("notification_characters", "event_seq character", "event_seq"),
    _table(
        "notifications",
        "id type message recipient_id event_seq cursor created_at sent_at",
        "cursor, id",
        created_at=_TIME,
        sent_at=_TIME,
    ),
    _table("sync_state", "key value updated_at", "key", updated_at=_TIME),
    _table(
        "webhook_deliveries",
        "id type ids occurred_at received_at applied_at",
        "received_at, id",
        ids=_ids,
        occurred_at=_TIME,
        received_at=_TIME,
        applied_at=_TIME,
    ),
)

COPIED: tuple[str, ...] = tuple(t.name for t in _TABLES)
SKIPPED: tuple[str, ...] = ("cache", "cache_characters")  # refills from the upstream
# What replicas share, with no SQLite counterpart (there it is in memory): nothing to copy.
POSTGRES_ONLY: tuple[str, ...] = ("fill_leases", "rate_tats")
# A target with any of these rows is not empty: it is some marveld's database already.
_MUST_BE_EMPTY = ("users", "events", "characters")


class CopyRefused(StorageError):
    """The source or the target is not what a copy takes; nothing was written."""


class CountsDiffer(StorageError):
    """The target's row counts differ from the source's; the copy was rolled back."""

    def __init__(self, counts: Sequence[tuple[str, int, int]]) -> None:
        wrong = ", ".join(f"{name} {src} → {dst}" for name, src, dst in counts if src != dst)
        super().__init__(f"row counts differ ({wrong}); the copy was rolled back")
        self.counts = tuple(counts)


@dataclass(frozen=True)
class Copied:
    """What a copy did: each copied table with its rows in the source and in the target."""

    source: str
    target: str  # the URL without its password
    counts: tuple[tuple[str, int, int], ...]
    next_seq: int  # the seq the target's next event gets
    skipped: tuple[str, ...] = SKIPPED


def _open_source(path: Path) -> sqlite3.Connection:
    """``path`` read-only, in a read transaction that its first SELECT starts."""
    if not path.is_file():
        raise CopyRefused(f"no SQLite database at {path}")
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    if not path.with_name(path.name + "-wal").exists():
        # No write-ahead log: no connection has the file open (marveld removes it when it
        # stops). Read the file alone, or even mode=ro would leave a -wal and a -shm beside
        # it, owned by whoever copies (root, say), which marveld could then not open.
        uri += "&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise CopyRefused(f"cannot open {path}: {exc}") from exc
    try:
        conn.execute("BEGIN")  # one snapshot for every table and count read below
        version = user_version(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise CopyRefused(f"cannot read {path}: {exc}") from exc
    if version != LATEST_VERSION:
        conn.close()
        if version > LATEST_VERSION:
            raise CopyRefused(
                f"{path} has schema version {version}, newer than the newest this marveld "
                f"knows ({LATEST_VERSION}): copy it with the marveld that wrote it"
            )
        raise CopyRefused(
            f"{path} has schema version {version}, older than this marveld's "
            f"({LATEST_VERSION}): start marveld on it once (database.path = {path}) so that "
            "it migrates the file, stop it, then copy"
        )
    return conn


def _source_rows(src: sqlite3.Connection, table: _Table) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of ``table`` converted for PostgreSQL, :data:`BATCH` at a time."""
    converters = [table.convert.get(column) for column in table.columns]
    # Table and column names are this module's constants, never outside input.
    cur = src.execute(f"SELECT {', '.join(table.columns)} FROM {table.name} ORDER BY {table.order}")
    while batch := cur.fetchmany(BATCH):
        yield [
            tuple(v if f is None else f(v) for f, v in zip(converters, row, strict=True))
            for row in batch
        ]


def _insert(table: _Table, extra: Sequence[str] = ()) -> str:
    columns = (*table.columns, *extra)
    overriding = " OVERRIDING SYSTEM VALUE" if table.name == "events" else ""
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)}){overriding}"
        f" VALUES ({', '.join(['%s'] * len(columns))})"
    )


def _copy_table(src: sqlite3.Connection, dst: psycopg.Connection, table: _Table) -> None:
    sql = _insert(table)
    with dst.cursor() as cur:
        for batch in _source_rows(src, table):
            cur.executemany(sql, batch)


def _copy_reads(src: sqlite3.Connection, dst: psycopg.Connection, table: _Table) -> None:
    """The read rows as they are, with the search tokens the projection stores beside
    them (marveld/storage/postgres/changes.py): SQLite's tokens of name and description."""
    sql = _insert(table, ("name_tokens", "description_tokens"))
    name, description = table.columns.index("name"), table.columns.index("description")
    with dst.cursor() as cur:
        for batch in _source_rows(src, table):
            tokens = tokenize([text for row in batch for text in (row[name], row[description])])
            cur.executemany(
                sql,
                [
                    (*row, stored(tokens[2 * i]), stored(tokens[2 * i + 1]))
                    for i, row in enumerate(batch)
                ],
            )


def _highest_seq(src: sqlite3.Connection) -> int:
    """The highest seq SQLite handed out (AUTOINCREMENT never reuses one, even deleted)."""
    top = src.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    given = src.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return max(int(top), int(given[0]) if given else 0)


def _count(conn: sqlite3.Connection | psycopg.Connection, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _copy(src: sqlite3.Connection, dst: psycopg.Connection, name: str) -> tuple[list[Any], int]:
    """The whole copy, in the caller's PostgreSQL transaction; returns the counts and the
    next seq. Raises (and so rolls back) on a non-empty target or a count that differs."""
    # Nothing else writes these tables until the copy commits or rolls back: a marveld
    # started on the target early waits (its appends and notifier take these locks too).
    dst.execute(
        "SELECT pg_advisory_xact_lock(%s), pg_advisory_xact_lock(%s)", (EVENT_LOCK, NOTIFY_LOCK)
    )
    dst.execute(f"LOCK TABLE {', '.join(COPIED)} IN EXCLUSIVE MODE")
    found = {table: _count(dst, table) for table in _MUST_BE_EMPTY}
    if any(found.values()):
        held = ", ".join(f"{n} {table}" for table, n in found.items() if n)
        raise CopyRefused(
            f"{name} is not empty ({held}): copy into a new, empty database; nothing was copied"
        )
    for table in _TABLES:
        log.info("copying %s", table.name)
        if table.name == "character_reads":
            _copy_reads(src, dst, table)
        else:
            _copy_table(src, dst, table)
    highest = _highest_seq(src)
    if highest:
        dst.execute("SELECT setval(pg_get_serial_sequence('events', 'seq'), %s)", (highest,))
    counts = [(t, _count(src, t), _count(dst, t)) for t in COPIED]
    if any(s != d for _, s, d in counts):
        raise CountsDiffer(counts)
    return counts, highest + 1


async def copy_sqlite_to_postgres(source: Path, url: str, *, password: str | None = None) -> Copied:
    """Copy the SQLite database at ``source`` into the empty PostgreSQL database at ``url``
    (``password`` if libpq does not find one itself), migrating it first.

    Raises :class:`CopyRefused` for a missing or unreadable source, one at another schema
    version, or a target that is not empty; :class:`CountsDiffer` when the copied counts
    do not match (rolled back); ``CannotOpen`` when the target cannot be reached. In every
    failure nothing is left written on the target but its (empty) schema.
    """
    src = await trio.to_thread.run_sync(_open_source, Path(source))
    with closing(src):
        db = await PgDatabase.open(url, password=password, pool_size=1)
        try:

            def run(conn: psycopg.Connection) -> tuple[list[Any], int]:
                try:
                    return _copy(src, conn, db.name)
                except sqlite3.Error as exc:
                    raise StorageError(f"cannot read {source}: {exc}") from exc

            counts, next_seq = await db.write(run)
        finally:
            await db.close()
    return Copied(
        source=str(source),
        target=db.name,
        counts=tuple((str(t), int(s), int(d)) for t, s, d in counts),
        next_seq=next_seq,
    )
