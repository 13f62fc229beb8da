"""The PostgreSQL backend's foundations against a real server (tests/postgres.py): its
migrations (under an advisory lock, refusing a newer schema), its pool (bounded, errors
that name the URL without its password) and the event log's order (sequence order is
commit order, however many writers)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
import trio

from marveld.domain.changes import Event
from marveld.storage.errors import CannotOpen, SchemaTooNew, StorageError
from marveld.storage.postgres import events
from marveld.storage.postgres.database import PgDatabase, redacted
from marveld.storage.postgres.schema import LATEST_VERSION, migrate, schema_version
from tests.postgres import with_database

TABLES = {
    "users", "events", "characters", "character_reads", "cache", "cache_characters",
    "notifications", "notification_subscriptions", "notification_characters", "sync_state",
    "webhook_deliveries", "marveld_schema",
    "fill_leases", "rate_tats",  # version 2: PostgreSQL only (replicas)
}  # fmt: skip


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def empty_database(server: str) -> str:
    name = f"e_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return with_database(server, name)


def test_a_new_database_is_migrated_once_even_by_two_replicas_at_once(
    postgres_server: str,
) -> None:
    url = empty_database(postgres_server)
    reached: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def replica() -> None:
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                start.wait(5)
                reached.append(migrate(conn, name="replica"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert reached == [LATEST_VERSION, LATEST_VERSION]
    assert tables(url) == TABLES
    with psycopg.connect(url, autocommit=True) as conn:
        assert schema_version(conn) == LATEST_VERSION
        assert migrate(conn, name="again") == LATEST_VERSION  # a no-op


def test_a_database_from_a_newer_marveld_is_refused(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE marveld_schema SET version = %s", (LATEST_VERSION + 1,))
        with pytest.raises(SchemaTooNew, match=f"schema version {LATEST_VERSION + 1}"):
            migrate(conn, name="db.internal/marveld")
        # Its lock is released: another migration can take it.
        assert conn.execute("SELECT pg_try_advisory_lock(1)").fetchone() == (True,)


def test_emails_are_unique_whatever_their_case(postgres_url: str) -> None:
    now = datetime.now(UTC)
    insert = (
        "INSERT INTO users (id, name, email, password, created_at, updated_at)"
        " VALUES (%s, 'P', %s, 'x', %s, %s)"
    )
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(insert, ("a", "Peter@Example.com", now, now))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(insert, ("b", "peter@example.COM", now, now))


def test_events_are_append_only(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        with conn.transaction():
            events.append(conn, [event(0)])
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE events SET type = 'Other'")


def test_redacted_urls_carry_no_password() -> None:
    assert redacted("postgresql://marveld:s3cret@db:5432/m?sslmode=verify-full") == (
        "postgresql://marveld:***@db:5432/m?sslmode=verify-full"
    )
    assert "s3cret" not in redacted("postgresql://db/m?password=s3cret&sslmode=require")
    assert redacted("postgresql://marveld@db/m") == "postgresql://marveld@db/m"


async def test_an_unreachable_server_is_cannot_open_naming_the_url_not_the_password() -> None:
    with socket_that_refuses() as port:
        url = f"postgresql://marveld:s3cret@127.0.0.1:{port}/marveld?connect_timeout=2"
        with pytest.raises(CannotOpen) as caught:
            await PgDatabase.open(url)
    assert f"127.0.0.1:{port}/marveld" in str(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_reads_and_writes_run_in_transactions_on_a_bounded_pool(postgres_url: str) -> None:
    db = await PgDatabase.open(postgres_url, pool_size=2)
    try:
        assert db.schema_version == LATEST_VERSION

        def fail_halfway(conn: psycopg.Connection) -> None:
            events.append(conn, [event(1)])
            raise RuntimeError("halfway")

        with pytest.raises(RuntimeError):
            await db.write(fail_halfway)
        assert await db.read(lambda conn: events.after(conn, 0, 10)) == []  # rolled back

        async def one(n: int) -> None:
            await db.write(lambda conn: events.append(conn, [event(n)]))

        async with trio.open_nursery() as nursery:
            for n in range(20):  # more than the pool: they wait their turn
                nursery.start_soon(one, n)
        seen = await db.read(lambda conn: events.after(conn, 0, 100), snapshot=True)
        assert len(seen) == 20
        with pytest.raises(StorageError, match="failed"):
            await db.read(lambda conn: conn.execute("SELECT * FROM no_such_table"))
    finally:
        await db.close()
    with pytest.raises(StorageError, match="closed"):
        await db.read(lambda conn: None)


def event(n: int) -> Event:
    now = datetime.now(UTC)
    return Event(
        id=str(uuid.uuid4()),
        stream_id=f"character-{n}",
        type="CharacterUpdated",
        correlation_id="test",
        causation_id=None,
        occurred_at=now,
        created_at=now,
        data={"n": n},
    )


WRITERS = 8
TOTAL = 10_000
BATCH = 5


def test_sequence_order_is_commit_order_for_a_reader_following_by_cursor(
    postgres_url: str,
) -> None:
    """8 writers append 10,000 events in small transactions while a reader follows the
    log by cursor, as the notifier does: it sees every seq exactly once, in order."""
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                for b in range(TOTAL // WRITERS // BATCH):
                    with conn.transaction():
                        events.append(
                            conn, [event(w * 10_000 + b * BATCH + i) for i in range(BATCH)]
                        )
        except BaseException as exc:
            errors.append(exc)

    seen: list[int] = []

    def reader() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            cursor = 0
            while True:
                finished = done.is_set()  # read once more after the writers are done
                page = events.after(conn, cursor, 500)
                seen.extend(e.seq or 0 for e in page)
                if page:
                    cursor = page[-1].seq or cursor
                elif finished:
                    return

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    follow = threading.Thread(target=reader)
    follow.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    follow.join(60)
    assert errors == []
    assert seen == list(range(1, TOTAL + 1))


class socket_that_refuses:
    """A free port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None
