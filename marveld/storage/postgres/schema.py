"""The PostgreSQL schema, as an ordered list of migrations versioned in ``marveld_schema``.

Migration *n* (1-based) takes a database from version *n - 1* to *n*; once released it
never changes. Version 1 is the SQLite schema at its version 4 (``marveld/storage/
schema.py``) written for PostgreSQL, table for table and column for column, with these
translations:

- times are ``timestamptz`` (SQLite: fixed-format ISO 8601 text);
- the event log's ``seq`` is an identity column; appending takes the transaction-scoped
  advisory lock :data:`EVENT_LOCK` first, so that sequence order is commit order (a
  reader following by cursor never sees seq 11 committed while 10 is still in flight);
- a user's e-mail is unique by ``lower(email)`` (SQLite: ``COLLATE NOCASE``);
- FTS5 becomes a generated ``tsvector`` column with a GIN index, over the tokens SQLite's
  unicode61 tokenizer makes of name and description (stored as ``text[]``: the ranking
  counts them), not PostgreSQL's parser: both backends find and rank the same characters;
- JSON arrays of ids that queries look into are ``bigint[]`` (SQLite: JSON text and
  ``json_each``); JSON documents that are only stored and returned stay text, byte for byte;
- keys compared byte by byte (cache keys, names folded for prefix search) are
  ``COLLATE "C"``;
- the append-only rule on events is a trigger, as in SQLite.

Version 2 adds what replicas share and a crash may lose (UNLOGGED tables, PostgreSQL
only: on SQLite one process keeps them in memory): the fill leases and the login
throttle's counts.

Version 3 adds ``compatible_from`` to ``marveld_schema``, the oldest schema version whose
marveld may run on the database (1: every migration so far only adds), and
``compatible_as_of``, the version it was written for.

Expand, then contract: during a rolling upgrade replicas of two releases run side by side
on one database, so a migration must not break the code of the release before it.

- An *expand* migration adds (tables, nullable or defaulted columns, indexes) and never
  renames, drops or changes the meaning of what older code uses. It leaves
  ``compatible_from`` as it is: replicas of older releases keep running on what it leaves.
- A *contract* migration (drops or renames what older code uses, or changes its meaning)
  raises ``compatible_from`` to its own version. It ships only in a release after every
  replica runs code that no longer needs what it removes.

Each :class:`Migration` records its ``compatible_from``; its version bump writes it, and
``compatible_as_of``. A release whose newest version is *M*, from version 3 on, starts on a
database at *N* > *M* when ``compatible_from`` is at most *M* (and was written for *N*: a
version moved by other means says nothing, and is refused); else it refuses it
(:class:`SchemaTooNew`, naming the version it needs). Releases before version 3 refuse
every newer database at start (one already running keeps running). The columns of
``marveld_schema`` are never renamed or dropped: every release reads them at start.

Migrations run at start under the session advisory lock :data:`MIGRATION_LOCK`, so two
replicas starting at once cannot race; each runs in one transaction with its version bump.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from marveld.storage.errors import SchemaTooNew

log = logging.getLogger(__name__)

# Advisory lock keys (one 64-bit space per database): "mrvd" and two small numbers.
MIGRATION_LOCK = 0x6D727664_0001
EVENT_LOCK = 0x6D727664_0002
NOTIFY_LOCK = 0x6D727664_0003  # the notification saga's step and sweep
LEADER_LOCK = 0x6D727664_0004  # held for its session by the leader replica
SYNC_LOCK = 0x6D727664_0005  # held for its session by the replica running a sync
# The two-key form (int4, int4): "marv" and the hash of a sync_state key.
SYNC_STATE_LOCKS = 0x6D617276

_V1: tuple[str, ...] = (
    # Accounts. Emails are unique whatever their case; rows are soft-deleted (deleted_at).
    """
    CREATE TABLE users (
        id          text PRIMARY KEY,
        name        text NOT NULL,
        email       text NOT NULL,
        password    text NOT NULL,
        role        text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
        created_at  timestamptz NOT NULL,
        updated_at  timestamptz NOT NULL,
        deleted_at  timestamptz
    )
    """,
    "CREATE UNIQUE INDEX users_email ON users (lower(email))",
    # The append-only event log; seq is the monotonic cursor (an identity: never reused).
    """
    CREATE TABLE events (
        seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id              text NOT NULL UNIQUE,
        stream_id       text NOT NULL,
        causation_id    text,
        correlation_id  text,
        type            text NOT NULL,
        created_at      timestamptz NOT NULL,
        occurred_at     timestamptz NOT NULL,
        data            text NOT NULL DEFAULT '{}'
    )
    """,
    "CREATE INDEX events_stream_id ON events (stream_id)",
    "CREATE INDEX events_correlation_id ON events (correlation_id)",
    """
    CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'events are append-only';
    END
    $$
    """,
    """
    CREATE TRIGGER events_append_only BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only()
    """,
    # Write side: current state of each character, no indexes beyond the keys.
    """
    CREATE TABLE characters (
        id            text PRIMARY KEY,
        marvel_id     bigint NOT NULL UNIQUE,
        name          text NOT NULL,
        description   text NOT NULL DEFAULT '',
        image_url     text NOT NULL DEFAULT '',
        modified      text NOT NULL DEFAULT '',
        content_hash  text NOT NULL,
        data          text NOT NULL,
        created_at    timestamptz NOT NULL,
        updated_at    timestamptz NOT NULL
    )
    """,
    # Read side, projected from events: the indexes and full-text search queries need.
    """
    CREATE TABLE character_reads (
        marvel_id    bigint PRIMARY KEY,
        name         text NOT NULL,
        name_folded  text COLLATE "C" NOT NULL,
        description  text NOT NULL DEFAULT '',
        image_url    text NOT NULL DEFAULT '',
        modified_at  timestamptz,
        data         text NOT NULL,
        -- SQLite's unicode61 tokens of name and description (postgres/search.py), so that
        -- search finds and ranks what SQLite's FTS5 does; search indexes their lexemes.
        name_tokens         text[] NOT NULL DEFAULT '{}',
        description_tokens  text[] NOT NULL DEFAULT '{}',
        search       tsvector GENERATED ALWAYS AS (
            array_to_tsvector(name_tokens || description_tokens)
        ) STORED
    )
    """,
    "CREATE INDEX character_reads_name_folded ON character_reads (name_folded)",
    "CREATE INDEX character_reads_modified_at ON character_reads (modified_at)",
    "CREATE INDEX character_reads_search ON character_reads USING gin (search)",
    # The persistent cache tier. characters = the page's JSON; character_ids its ids.
    """
    CREATE TABLE cache (
        id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        cache_key        text COLLATE "C" NOT NULL UNIQUE,
        characters       text NOT NULL,
        etag             text,
        character_ids    bigint[] NOT NULL DEFAULT '{}',
        created_at       timestamptz NOT NULL,
        updated_at       timestamptz NOT NULL,
        expires_at       timestamptz NOT NULL,
        body_fetched_at  timestamptz
    )
    """,
    "CREATE INDEX cache_expires_at ON cache (expires_at)",
    # Tags for invalidation by character id.
    """
    CREATE TABLE cache_characters (
        cache_id   bigint NOT NULL REFERENCES cache (id) ON DELETE CASCADE,
        marvel_id  bigint NOT NULL,
        PRIMARY KEY (cache_id, marvel_id)
    )
    """,
    "CREATE INDEX cache_characters_marvel_id ON cache_characters (marvel_id)",
    """
    CREATE TABLE notifications (
        id            text PRIMARY KEY,
        type          text NOT NULL,
        message       text NOT NULL,
        recipient_id  text NOT NULL REFERENCES users (id),
        event_seq     bigint REFERENCES events (seq),
        cursor        bigint NOT NULL,
        created_at    timestamptz NOT NULL,
        sent_at       timestamptz
    )
    """,
    "CREATE INDEX notifications_recipient_cursor ON notifications (recipient_id, cursor)",
    # At most one notification per user and event: re-running the saga is idempotent.
    """
    CREATE UNIQUE INDEX notifications_recipient_event
    ON notifications (recipient_id, event_seq)
    """,
    "CREATE INDEX notifications_created_at ON notifications (created_at)",
    # What each user is notified of; no row: everything. character_ids empty: any
    # character; name_prefix a folded prefix, empty: any name.
    """
    CREATE TABLE notification_subscriptions (
        user_id        text PRIMARY KEY REFERENCES users (id),
        character_ids  bigint[] NOT NULL DEFAULT '{}',
        name_prefix    text COLLATE "C" NOT NULL DEFAULT '',
        updated_at     timestamptz NOT NULL
    )
    """,
    # The character as of each event that notified someone, once per event.
    """
    CREATE TABLE notification_characters (
        event_seq  bigint PRIMARY KEY REFERENCES events (seq),
        character  text NOT NULL
    )
    """,
    # Positions of background work (saga outbox position, poller cursor, ...).
    """
    CREATE TABLE sync_state (
        key         text PRIMARY KEY,
        value       text NOT NULL,
        updated_at  timestamptz NOT NULL
    )
    """,
    # Signed webhook deliveries, by the signature's v1 value: a delivery seen twice is
    # applied once; one received but not yet applied (applied_at NULL) survives a restart.
    """
    CREATE TABLE webhook_deliveries (
        id           text PRIMARY KEY,
        type         text NOT NULL,
        ids          bigint[] NOT NULL,
        occurred_at  timestamptz,
        received_at  timestamptz NOT NULL,
        applied_at   timestamptz
    )
    """,
    """
    CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (received_at)
    WHERE applied_at IS NULL
    """,
)

_V2: tuple[str, ...] = (
    # Fill leases: the replica that asks the upstream for a missing answer holds its key
    # here until it stores the answer (or the lease expires: it died), so that identical
    # misses on other replicas wait for it instead of asking too. UNLOGGED: a lease is
    # worth nothing after a crash of the server, and costs no WAL.
    """
    CREATE UNLOGGED TABLE fill_leases (
        cache_key   text COLLATE "C" PRIMARY KEY,
        holder      text NOT NULL,
        expires_at  timestamptz NOT NULL
    )
    """,
    # Rate counts replicas share (the login throttle): each key's GCRA "theoretical
    # arrival time", in seconds since the epoch. A key whose time has passed counts
    # nothing: such rows are deleted as calls go by (the index finds them).
    """
    CREATE UNLOGGED TABLE rate_tats (
        key  text COLLATE "C" PRIMARY KEY,
        tat  double precision NOT NULL
    )
    """,
    "CREATE INDEX rate_tats_tat ON rate_tats (tat)",
)

_V3: tuple[str, ...] = (
    # Which releases may run on the database (the module docstring's rule), and for which
    # version that was said: only the version bump writes these two.
    "ALTER TABLE marveld_schema ADD COLUMN compatible_from integer NOT NULL DEFAULT 1",
    "ALTER TABLE marveld_schema ADD COLUMN compatible_as_of integer",
)


@dataclass(frozen=True)
class Migration:
    """One step, and the oldest schema version whose marveld may run on a database it has
    brought to its version: unchanged by an expand migration, its own by a contract one."""

    statements: tuple[str, ...]
    compatible_from: int


MIGRATIONS: tuple[Migration, ...] = (
    Migration(_V1, compatible_from=1),
    Migration(_V2, compatible_from=1),  # expand: adds tables
    Migration(_V3, compatible_from=1),  # expand: adds columns with defaults
)
LATEST_VERSION = len(MIGRATIONS)
COMPATIBILITY_VERSION = 3  # the first with compatible_from

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS marveld_schema (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version   integer NOT NULL
)
"""


def schema_version(conn: psycopg.Connection) -> int:
    """The version the database is at; 0 for one marveld never migrated."""
    row = conn.execute("SELECT to_regclass('marveld_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute("SELECT version FROM marveld_schema").fetchone()
    return int(found[0]) if found else 0


def compatible_from(conn: psycopg.Connection, version: int) -> int | None:
    """The oldest schema version whose marveld may run on the database at ``version``
    (from :data:`COMPATIBILITY_VERSION` on); None when the database does not say it for
    that version (its version was moved by hand)."""
    row = conn.execute("SELECT compatible_from, compatible_as_of FROM marveld_schema").fetchone()
    if row is None or row[1] != version:
        return None
    return int(row[0])


def migrate(conn: psycopg.Connection, *, name: str) -> int:
    """Bring the database on ``conn`` (autocommit mode) to :data:`LATEST_VERSION`, holding
    :data:`MIGRATION_LOCK` throughout: a replica that starts while another migrates waits,
    then finds the work done. A database a newer marveld migrated further is left as it
    is, and used when its ``compatible_from`` allows this release; else this raises
    :class:`SchemaTooNew` (``name``, the redacted URL, names the database). Returns the
    version the database is at."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        found = schema_version(conn)
        if found > LATEST_VERSION:
            _check_newer(conn, found, name=name)
        while found < LATEST_VERSION:
            with conn.transaction():
                conn.execute(_VERSION_TABLE)
                for statement in MIGRATIONS[found].statements:
                    conn.execute(statement)
                found += 1
                _bump(conn, found)
            log.info("database %s migrated to schema version %d", name, found)
        return found
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def _check_newer(conn: psycopg.Connection, found: int, *, name: str) -> None:
    """Raise :class:`SchemaTooNew` unless the database at ``found`` (newer than this
    release knows) lets this release run on it."""
    oldest = compatible_from(conn, found)
    if oldest is None:
        raise SchemaTooNew(name, found, LATEST_VERSION)
    if oldest > LATEST_VERSION:
        raise SchemaTooNew(name, found, LATEST_VERSION, needs=oldest)
    log.info(
        "database %s is at schema version %d, written by a newer marveld; this release "
        "(schema %d) may run on it: its migrations since %d only add",
        name,
        found,
        LATEST_VERSION,
        LATEST_VERSION,
    )


def _bump(conn: psycopg.Connection, version: int) -> None:
    """Record that the database is at ``version`` (in the migration's transaction), and
    from :data:`COMPATIBILITY_VERSION` on which releases may run on it."""
    if version < COMPATIBILITY_VERSION:
        conn.execute(
            "INSERT INTO marveld_schema (version) VALUES (%s)"
            " ON CONFLICT (only_row) DO UPDATE SET version = excluded.version",
            (version,),
        )
        return
    conn.execute(
        "INSERT INTO marveld_schema (version, compatible_from, compatible_as_of)"
        " VALUES (%(v)s, %(c)s, %(v)s) ON CONFLICT (only_row) DO UPDATE"
        " SET version = excluded.version, compatible_from = excluded.compatible_from,"
        " compatible_as_of = excluded.compatible_as_of",
        {"v": version, "c": MIGRATIONS[version - 1].compatible_from},
    )
