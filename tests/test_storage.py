"""Storage: schema and migrations, users, characters, concurrency.

Rules: tests that take ``store`` run on both backends (a real SQLite file under
``tmp_path``, a fresh PostgreSQL database), used through the async API from trio tests;
no sleeps, no fake clocks (trio's autojump clock jumps while the database runs in a
thread); the timestamps are fixed values passed in, as the services pass theirs. Raw SQL
looks at the rows through the store's own connections (``tests.stores``, the helpers
below); sqlite3 is used directly only for what is SQLite's alone (the file, sqlite_master,
PRAGMAs, FTS5, faking a newer schema). The code under test is reached through
``marveld.storage``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import trio
from psycopg.pq import TransactionStatus

from marveld.domain.characters import Character, CharacterUrl
from marveld.domain.errors import AlreadyExists, NotFound
from marveld.storage import LATEST_VERSION, SchemaTooNew, StorageError, Store
from marveld.storage.codec import time_to_text
from marveld.storage.database import Database
from tests.stores import is_postgres, rows

T0 = datetime(2026, 11, 24, 6, 24, 4, 123456, tzinfo=UTC)

TABLES = {
    "users",
    "events",
    "characters",
    "character_reads",
    "character_search",
    "cache",
    "cache_characters",
    "notifications",
    "sync_state",
}
INDEXES = {
    "events_stream_id",
    "character_reads_name_folded",
    "character_reads_modified_at",
    "cache_expires_at",
    "cache_characters_marvel_id",
    "notifications_recipient_cursor",
    "notifications_recipient_event",
}


def character(marvel_id: int, name: str = "", description: str = "") -> Character:
    return Character(
        id=marvel_id,
        name=name or f"Hero {marvel_id}",
        description=description,
        image_url=f"http://i.annihil.us/u/prod/marvel/i/mg/{marvel_id}.jpg",
        modified_raw="2014-04-29T14:18:17-0400",
        resource_uri=f"http://gateway.marvel.com/v1/public/characters/{marvel_id}",
        comics_available=12,
        series_available=3,
        stories_available=21,
        events_available=1,
        urls=(CharacterUrl(type="detail", url=f"http://marvel.com/characters/{marvel_id}"),),
    )


def raw_db(path: Path) -> closing[sqlite3.Connection]:
    return closing(sqlite3.connect(path))


def db_time(store: Store, value: datetime) -> Any:
    """A time as a parameter of raw SQL: the SQLite store's text, or the datetime."""
    return value if is_postgres(store) else time_to_text(value)


async def texts(store: Store, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` (``tests.stores.rows``) with each time as the SQLite store's text
    (``time_to_text``: UTC, microseconds), so that one assertion holds on both backends."""
    return [
        tuple(time_to_text(v) if isinstance(v, datetime) else v for v in row)
        for row in await rows(store, sql, *params)
    ]


async def execute(store: Store, sql: str, *params: Any) -> None:
    """``sql`` in a write transaction of the store (``?`` placeholders, as ``rows``)."""
    if is_postgres(store):
        sql = sql.replace("?", "%s")
    await store._db.write(lambda conn: conn.execute(sql, params))


async def refuse_inserts(store: Store, table: str, message: str) -> None:
    """A trigger that fails every insert into ``table`` with ``message`` (a plain word)."""
    if is_postgres(store):
        await execute(
            store,
            f"CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql"
            f" AS $$ BEGIN RAISE EXCEPTION '{message}'; END $$",
        )
        await execute(
            store,
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table}"
            f" FOR EACH ROW EXECUTE FUNCTION refuse_{table}()",
        )
    else:
        await execute(
            store,
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table}"
            f" BEGIN SELECT RAISE(ABORT, '{message}'); END",
        )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "marveld.sqlite3"


# --- schema and migrations ---------------------------------------------------------------


async def test_open_creates_file_parent_and_every_table_and_index(db_path: Path) -> None:
    # SQLite's file, sqlite_master and PRAGMAs (PostgreSQL's: test_postgres_storage.py).
    async with Store.open(db_path) as store:
        assert await trio.Path(db_path).exists()
        assert store.schema_version == LATEST_VERSION >= 1
    with raw_db(db_path) as conn:
        objects = {
            (kind, name) for kind, name in conn.execute("SELECT type, name FROM sqlite_master")
        }
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert {("table", t) for t in TABLES} <= objects
    assert {("index", i) for i in INDEXES} <= objects
    assert version == LATEST_VERSION
    assert mode == "wal"


async def test_connections_have_busy_timeout_and_foreign_keys(db_path: Path) -> None:
    # SQLite's PRAGMAs: PostgreSQL has neither setting.
    def pragmas(conn: sqlite3.Connection) -> tuple[int, int]:
        timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        foreign = conn.execute("PRAGMA foreign_keys").fetchone()[0]
        return timeout, foreign

    async with Store.open(db_path) as store:
        db = store._db
        assert isinstance(db, Database)
        assert await db.read(pragmas) == (5000, 1)
        assert await db.write(pragmas) == (5000, 1)


async def test_fts5_search_follows_the_read_table(db_path: Path) -> None:
    # SQLite's FTS5 table and its triggers (PostgreSQL's search: test_search_backends.py).
    def fill(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO character_reads (marvel_id, name, name_folded, description, data)"
            " VALUES (?, ?, ?, ?, '{}')",
            [
                (1, "Spider-Man", "spider-man", "Bitten by a radioactive spider"),
                (2, "Iron Man", "iron man", "Genius in a suit"),
            ],
        )
        conn.execute("UPDATE character_reads SET description = 'Café owner' WHERE marvel_id = 2")

    def search(term: str) -> Callable[[sqlite3.Connection], list[int]]:
        def run(conn: sqlite3.Connection) -> list[int]:
            sql = "SELECT rowid FROM character_search WHERE character_search MATCH ? ORDER BY rowid"
            return [row[0] for row in conn.execute(sql, (term,))]

        return run

    async with Store.open(db_path) as store:
        db = store._db
        assert isinstance(db, Database)
        await db.write(fill)
        assert await db.read(search("spider")) == [1]
        assert await db.read(search("man")) == [1, 2]
        assert await db.read(search("cafe")) == [2]
        assert await db.read(search("genius")) == []


async def test_events_are_append_only(store: Store) -> None:
    stamp = db_time(store, T0)
    insert = (
        "INSERT INTO events (id, stream_id, type, created_at, occurred_at)"
        " VALUES ('e1', 'character-1', 'CharacterAdded', ?, ?)"
    )
    if is_postgres(store):
        insert = insert.replace("?", "%s")

    def append_then_update(conn: Any) -> None:
        conn.execute(insert, (stamp, stamp))
        conn.execute("UPDATE events SET type = 'x'")

    with pytest.raises(StorageError, match="append-only"):
        await store._db.write(append_then_update)


async def test_reopen_is_a_no_op(db_path: Path) -> None:
    async with Store.open(db_path) as store:
        await store.users.create(name="Ann", email="ann@example.com", password_hash="h", now=T0)
    with raw_db(db_path) as conn:
        schema_before = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    async with Store.open(db_path) as store:
        assert store.schema_version == LATEST_VERSION
        assert await store.users.by_email("ann@example.com") is not None
    with raw_db(db_path) as conn:
        assert conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == (
            schema_before
        )
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION


async def test_newer_database_is_refused_naming_both_versions(db_path: Path) -> None:
    async with Store.open(db_path):
        pass
    newer = LATEST_VERSION + 3
    with raw_db(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    with pytest.raises(SchemaTooNew) as caught:
        async with Store.open(db_path):
            pytest.fail("a newer database must not open")
    message = str(caught.value)
    assert f"version {newer}" in message
    assert f"({LATEST_VERSION})" in message
    assert str(db_path) in message
    with raw_db(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == newer


async def test_parallel_opens_of_a_new_file_migrate_once(db_path: Path) -> None:
    versions: list[int] = []

    async def open_one() -> None:
        async with Store.open(db_path) as store:
            versions.append(store.schema_version)
            await store.ping()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(open_one)
    assert versions == [LATEST_VERSION] * 4


async def test_unusable_paths_are_storage_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    await trio.Path(blocker).write_text("not a folder")
    with pytest.raises(StorageError, match="cannot create"):
        async with Store.open(blocker / "marveld.sqlite3"):
            pass
    with pytest.raises(StorageError, match="cannot open"):
        async with Store.open(tmp_path):  # a directory, not a database file
            pass
    with pytest.raises(ValueError, match="readers"):
        async with Store.open(tmp_path / "x.sqlite3", readers=0):
            pass


async def test_snapshot_reads_see_one_state(store: Store, db_path: Path) -> None:
    def in_transaction(conn: Any) -> bool:
        if is_postgres(store):
            return bool(conn.info.transaction_status != TransactionStatus.IDLE)
        return bool(conn.in_transaction)

    def two_counts(conn: Any) -> tuple[bool, int]:
        return in_transaction(conn), conn.execute("SELECT count(*) FROM users").fetchone()[0]

    assert await store._db.read(two_counts, snapshot=True) == (True, 0)
    assert await store._db.read(two_counts) == (False, 0)
    if is_postgres(store):
        with pytest.raises(AttributeError, match="no file path"):
            assert store.path
    else:
        assert store.path == db_path
    with pytest.raises(StorageError, match=r'no such column|column "nope" does not exist'):
        await store._db.read(lambda conn: conn.execute("SELECT nope FROM users"))


async def test_closed_store_refuses_work(db_path: Path) -> None:
    async with Store.open(db_path) as store:
        await store.ping()
    with pytest.raises(StorageError, match="closed"):
        await store.ping()
    with pytest.raises(StorageError, match="closed"):
        await store.cache.clear()


async def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="aware"):
        await store.users.create(
            name="N", email="n@example.com", password_hash="h", now=datetime(2026, 1, 1)
        )


# --- users ---------------------------------------------------------------------------------


async def test_user_create_and_lookups(store: Store) -> None:
    created = await store.users.create(
        name="Ann", email="ann@example.com", password_hash="$argon2id$x", now=T0
    )
    assert len(created.id) == 36
    assert created.created_at == created.updated_at == T0
    assert created.deleted_at is None
    assert await store.users.by_id(created.id) == created
    assert await store.users.by_email("ann@example.com") == created
    assert await store.users.by_email("ANN@Example.COM") == created
    assert await store.users.by_email("bob@example.com") is None
    assert await store.users.by_id("00000000-0000-0000-0000-000000000000") is None


async def test_duplicate_email_in_any_case_is_already_exists(store: Store) -> None:
    await store.users.create(name="Ann", email="ann@example.com", password_hash="h", now=T0)
    with pytest.raises(AlreadyExists, match="email is already registered"):
        await store.users.create(name="Other", email="ANN@example.com", password_hash="h", now=T0)
    # the failed insert rolled back and left the writer usable
    await store.users.create(name="Bob", email="bob@example.com", password_hash="h", now=T0)


async def test_times_are_stored_as_utc_text_and_read_back_aware(store: Store) -> None:
    paris = datetime(2026, 11, 24, 7, 24, 4, 123456, tzinfo=timezone(timedelta(hours=1)))
    user = await store.users.create(name="Ann", email="a@example.com", password_hash="h", now=paris)
    assert user.created_at == T0
    assert user.created_at.utcoffset() == timedelta(0)
    ((stored,),) = await rows(store, "SELECT created_at FROM users")
    if is_postgres(store):  # timestamptz: the instant, to the microsecond
        assert stored == T0
    else:
        assert stored == "2026-11-24T06:24:04.123456+00:00"


async def test_soft_deleted_users_are_still_returned(store: Store) -> None:
    user = await store.users.create(name="Ann", email="a@example.com", password_hash="h", now=T0)
    deleted_at = T0 + timedelta(days=1)

    await execute(store, "UPDATE users SET deleted_at = ?", db_time(store, deleted_at))
    found = await store.users.by_email("a@example.com")
    assert found is not None
    assert found.deleted_at == deleted_at
    assert await store.users.by_id(user.id) == found


async def test_set_password_hash(store: Store) -> None:
    user = await store.users.create(name="Ann", email="a@example.com", password_hash="old", now=T0)
    later = T0 + timedelta(hours=2)
    await store.users.set_password_hash(user.id, "new", later)
    found = await store.users.by_id(user.id)
    assert found is not None
    assert (found.password_hash, found.created_at, found.updated_at) == ("new", T0, later)
    with pytest.raises(NotFound):
        await store.users.set_password_hash("no-such-id", "x", later)


# --- characters ----------------------------------------------------------------------------


async def character_times(store: Store) -> dict[int, tuple[str, str]]:
    found = await texts(store, "SELECT marvel_id, created_at, updated_at FROM characters")
    return {marvel_id: (created, updated) for marvel_id, created, updated in found}


async def test_characters_upsert_new_changed_identical(store: Store) -> None:
    one, two, three = character(1), character(2), character(3)
    assert await store.characters.get(1) is None
    assert await store.characters.upsert_many([one, two], T0) == 2
    assert await store.characters.get(1) == one
    before = await character_times(store)

    changed = character(2, description="now with a description")
    later = T0 + timedelta(hours=1)
    assert await store.characters.upsert_many([one, changed, three], later) == 2
    after = await character_times(store)
    assert after[1] == before[1]  # identical: untouched
    assert after[2] == (before[2][0], later.isoformat())  # changed: created_at kept
    assert after[3] == (later.isoformat(), later.isoformat())
    assert await store.characters.get(2) == changed

    assert await store.characters.upsert_many([one, changed, three], later) == 0
    assert await store.characters.upsert_many([], later) == 0


async def test_characters_upsert_counts_a_repeated_id_once(store: Store) -> None:
    first, last = character(7, name="Old"), character(7, name="New")
    assert await store.characters.upsert_many([first, last], T0) == 1
    assert await store.characters.get(7) == last


async def test_character_from_marvel_json_round_trips(store: Store) -> None:
    raw = {
        "id": 1011334,
        "name": "3-D Man",
        "description": "",
        "modified": "-0001-11-30T00:00:00-0500",
        "thumbnail": {
            "path": "http://i.annihil.us/u/prod/marvel/i/mg/c/e0/535fecbbb9784",
            "extension": "jpg",
        },
        "resourceURI": "http://gateway.marvel.com/v1/public/characters/1011334",
        "comics": {"available": 12},
        "series": {"available": 3},
        "stories": {"available": 21},
        "events": {"available": 1},
        "urls": [{"type": "detail", "url": "http://marvel.com/comics/characters/1011334/3-d_man"}],
    }
    hero = Character.from_marvel(raw)
    assert await store.characters.upsert_many([hero], T0) == 1
    assert await store.characters.get(1011334) == hero


# --- concurrency ---------------------------------------------------------------------------


async def test_parallel_creates_all_land(store: Store) -> None:
    ids: list[str] = []

    async def register(n: int) -> None:
        user = await store.users.create(
            name=f"User {n}", email=f"user{n}@example.com", password_hash="h", now=T0
        )
        ids.append(user.id)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(register, n)
    assert len(set(ids)) == 50
    for n in range(50):
        assert await store.users.by_email(f"USER{n}@example.com") is not None


async def test_parallel_creates_of_one_email_make_one_user(store: Store) -> None:
    outcomes: list[str] = []

    async def register(n: int) -> None:
        try:
            await store.users.create(
                name=f"User {n}", email="same@example.com", password_hash="h", now=T0
            )
        except AlreadyExists:
            outcomes.append("taken")
        else:
            outcomes.append("created")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(register, n)
    assert sorted(outcomes) == ["created"] + ["taken"] * 19


async def test_reads_run_while_a_write_is_in_progress(store: Store) -> None:
    existing = await store.users.create(
        name="Ann", email="ann@example.com", password_hash="h", now=T0
    )
    in_write = trio.Event()
    release = threading.Event()

    stamp = db_time(store, T0)
    insert = (
        "INSERT INTO users (id, name, email, password, created_at, updated_at)"
        " VALUES ('u2', 'Bob', 'bob@example.com', 'h', ?, ?)"
    )
    if is_postgres(store):
        insert = insert.replace("?", "%s")

    def slow_write(conn: Any) -> None:
        conn.execute(insert, (stamp, stamp))
        trio.from_thread.run_sync(in_write.set)
        assert release.wait(timeout=20), "the test never released the writer"

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._db.write, slow_write)
            await in_write.wait()
            try:
                # the writer holds an open transaction: reads still answer, from the last commit
                assert await store.users.by_id(existing.id) == existing
                assert await store.users.by_id("u2") is None
                await store.ping()
            finally:
                release.set()
    assert await store.users.by_id("u2") is not None


async def test_cancelled_write_commits_or_rolls_back_as_a_whole(store: Store) -> None:
    with trio.move_on_after(0):
        await store.users.create(name="Ann", email="a@example.com", password_hash="h", now=T0)
    # whether it ran or not, the writer is usable and the state is all-or-nothing
    user = await store.users.by_email("a@example.com")
    assert user is None or user.name == "Ann"
    await store.users.create(name="Bob", email="b@example.com", password_hash="h", now=T0)
