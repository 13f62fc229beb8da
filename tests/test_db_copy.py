"""``marveld db copy``: a SQLite database made by a real daemon, copied into an empty
PostgreSQL one, then served from it by a daemon on PostgreSQL: the same users log in, the
same notifications come back with the same cursors, a subscriber resumes from a cursor of
before, and new events continue the sequence. A target that is not empty, a missing
source and a source at an older schema are refused, with nothing copied."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status

from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from marveld.storage import Store
from marveld.storage.postgres.copy import (
    COPIED,
    POSTGRES_ONLY,
    SKIPPED,
    CopyRefused,
    copy_sqlite_to_postgres,
)
from tests.aio import grpc_client
from tests.calls import PASSWORD, TIMEOUT, register_and_login, status_of
from tests.conftest import Clock, Running
from tests.notify_clients import grpc_stream
from tests.test_notifications import HULK, change, list_notifications, start
from tests.test_sync import SPIDER_MAN, make_admin, trigger_sync
from tests.waiting import wait_until

FAN = "fan@example.com"  # subscribed to Hulk only
GONE = "gone@example.com"  # soft-deleted before the copy


def login_call(email: str) -> Callable[[Channel], Awaitable[str]]:
    async def go(channel: Channel) -> str:
        reply = await pb.AuthServiceStub(channel).login(
            pb.LoginRequest(email=email, password=PASSWORD), timeout=TIMEOUT
        )
        return str(reply.access_token)

    return go


async def login(m: Running, email: str) -> dict[str, str]:
    return {"authorization": f"Bearer {await m.client.call(login_call(email))}"}


async def subscription(
    m: Running, auth: dict[str, str], *, character_ids: list[int] | None = None
) -> pb.Subscription:
    async def go(channel: Channel) -> pb.Subscription:
        stub = pb.NotificationServiceStub(channel)
        if character_ids is None:
            return await stub.get_subscription(
                pb.GetSubscriptionRequest(), metadata=auth, timeout=TIMEOUT
            )
        request = pb.Subscription(filter=pb.NotificationFilter(character_ids=character_ids))
        return await stub.update_subscription(request, metadata=auth, timeout=TIMEOUT)

    return await m.client.call(go)


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a file no one has open, read leaving nothing beside it (no -wal, -shm)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)) as conn:
        return [tuple(row) for row in conn.execute(sql)]


def pg_rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]


def beside(path: Path) -> list[str]:
    """The files SQLite keeps beside a database while it is open (-wal, -shm)."""
    return sorted(p.name for p in path.parent.glob(f"{path.name}-*"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def run_copy(
    source: Path, url: str, tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m marveld db copy`` as an operator runs it."""
    config = tmp_path / "copy.toml"
    config.touch()
    argv = [sys.executable, "-m", "marveld", "db", "copy", "--from", str(source), "--to", url]
    done: subprocess.CompletedProcess[str] = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [*argv, "--config", str(config)],
            env={"PATH": "/usr/bin:/bin", **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
    )
    return done


def counts_printed(out: str) -> dict[str, tuple[int, int]]:
    return {
        name: (int(before), int(after))
        for name, before, after in re.findall(r"^  (\w+) +(\d+) → (\d+)$", out, re.MULTILINE)
    }


async def users_of(store: Store, emails: list[str]) -> list[Any]:
    return [await store.users.by_email(email) for email in emails]


async def test_a_copied_database_serves_the_same_users_notifications_and_cursors(
    sim: SimHandle, tmp_path: Path, clock: Clock, postgres_url: str
) -> None:
    # --- a database made by a daemon on SQLite: users, a first sync, changes that notify.
    async with trio.open_nursery() as on_sqlite:
        m: Running = await start(on_sqlite, sim, tmp_path, clock)
        async with grpc_client(m.endpoints.grpc_port) as client:
            m.client = client
            await make_admin(m)
            admin = await login(m, "admin@example.com")
            assert (await trigger_sync(m, admin)).kind == "bootstrap"
            peter = await register_and_login(m)
            fan = await register_and_login(m, FAN)
            await subscription(m, fan, character_ids=[HULK])
            await register_and_login(m, GONE)
            async with grpc_stream(m.client, peter) as stream:
                await change(m, SPIDER_MAN, "Before the copy.")
                first = await stream.next()
                await change(m, HULK, "Hulk before the copy.")
                second = await stream.next()
            before = await list_notifications(m, peter)
            fan_before = await list_notifications(m, fan)
            assert [n.id for n in before.notifications] == [first.id, second.id]
            assert [n.character.id for n in fan_before.notifications] == [HULK]
        source = m.settings.database.path
        async with Store.open(source) as store:
            user = await store.users.by_email(GONE)
            assert user is not None
            await store.users.soft_delete(user.id, datetime.now(UTC))
        on_sqlite.cancel_scope.cancel()
    assert beside(source) == []  # marveld stopped: no write-ahead log left
    emails = [u[0] for u in sqlite_rows(source, "SELECT email FROM users")]
    async with Store.open(source) as store:
        users_before = await users_of(store, emails)
        searched = await store.reads.search(["spider"], limit=10, offset=0)
    top_seq = sqlite_rows(source, "SELECT max(seq) FROM events")[0][0]
    expected = {t: sqlite_rows(source, f"SELECT count(*) FROM {t}")[0][0] for t in COPIED}
    assert expected["users"] == 4
    assert expected["notifications"] >= 3  # peter's two, the fan's one, the admin's ...
    assert expected["character_reads"] == expected["characters"] > 0
    assert expected["notification_subscriptions"] == 1
    sealed = digest(source)
    assert beside(source) == []

    # --- the copy, as an operator runs it.
    done = await run_copy(source, postgres_url, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert counts_printed(done.stdout) == {t: (n, n) for t, n in expected.items()}
    assert "not copied: cache, cache_characters" in done.stdout
    assert f"the next event gets seq {top_seq + 1}" in done.stdout
    assert digest(source) == sealed  # read-only: the source file is as it was
    assert beside(source) == []  # and it left no -wal or -shm file beside it
    for table, n in expected.items():
        assert pg_rows(postgres_url, f"SELECT count(*) FROM {table}") == [(n,)], table
    same = "SELECT key, value FROM sync_state ORDER BY key"  # notify.position, checkpoints
    assert pg_rows(postgres_url, same) == sqlite_rows(source, same)
    same = "SELECT seq, id, stream_id, type, correlation_id, data FROM events ORDER BY seq"
    assert pg_rows(postgres_url, same) == sqlite_rows(source, same)
    same = "SELECT id, recipient_id, event_seq, cursor FROM notifications ORDER BY id"
    assert pg_rows(postgres_url, same) == sqlite_rows(source, same)
    # Each read row has the search tokens the projection would have written.
    assert pg_rows(
        postgres_url, "SELECT count(*) FROM character_reads WHERE cardinality(name_tokens) = 0"
    ) == [(0,)]
    async with Store.open_url(postgres_url) as store:
        assert await users_of(store, emails) == users_before  # hashes, roles, times, deletes
        # Search finds and ranks the same: each read row has the projection's search tokens.
        assert await store.reads.search(["spider"], limit=10, offset=0) == searched

    # --- a daemon on the PostgreSQL database carries on where SQLite's stopped.
    async with trio.open_nursery() as on_postgres:
        m = await start(on_postgres, sim, tmp_path, clock, MARVELD_DATABASE_URL=postgres_url)
        async with grpc_client(m.endpoints.grpc_port) as client:
            m.client = client
            peter = await login(m, "peter@example.com")  # the old password, its old hash
            admin = await login(m, "admin@example.com")
            synced = await trigger_sync(m, admin)  # still an admin; the first sync is done
            assert (synced.kind, synced.added, synced.updated) == ("poll", 0, 0)
            gone = await status_of(m, login_call(GONE))
            assert gone.status is Status.UNAUTHENTICATED
            listed = await list_notifications(m, peter)
            assert listed.notifications == before.notifications  # same cursors, same all
            assert listed.next_cursor == before.next_cursor
            fan = await login(m, FAN)
            assert (await subscription(m, fan)).filter.character_ids == [HULK]
            async with grpc_stream(m.client, peter, after_cursor=first.cursor) as stream:
                replayed = await stream.next()
                await change(m, SPIDER_MAN, "After the copy.")
                live = await stream.next()
            assert (replayed.id, replayed.cursor) == (second.id, second.cursor)
            assert replayed.character.description == "Hulk before the copy."
            assert live.character.description == "After the copy."
            assert live.cursor > top_seq  # the sequence went on past every copied seq
            new = pg_rows(postgres_url, "SELECT seq FROM events WHERE seq > %s", top_seq)
            assert [seq for (seq,) in new] == [live.cursor]

            async def fan_untouched() -> bool:  # the filter still applies: no Spider-Man
                got = await list_notifications(m, fan)
                return [n.id for n in got.notifications] == [n.id for n in fan_before.notifications]

            await wait_until(
                lambda: (
                    pg_rows(
                        postgres_url,
                        "SELECT count(*) FROM notifications WHERE cursor = %s",
                        live.cursor,
                    )
                    == [(2,)]
                ),
                what="the new change's notifications, peter's and the admin's",
            )
            assert await fan_untouched()
        on_postgres.cancel_scope.cancel()


def test_every_table_is_copied_or_named_as_skipped(postgres_url: str) -> None:
    tables = {
        row[0]
        for row in pg_rows(
            postgres_url,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        )
    }
    assert tables == {*COPIED, *SKIPPED, *POSTGRES_ONLY, "marveld_schema"}


async def sqlite_with_user(path: Path, email: str) -> None:
    async with Store.open(path) as store:
        await store.users.create(
            name="Someone", email=email, password_hash="$argon2id$x", now=datetime.now(UTC)
        )


async def test_a_target_that_is_not_empty_is_refused_and_left_as_it_was(
    tmp_path: Path, postgres_url: str
) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    await sqlite_with_user(first, "first@example.com")
    await sqlite_with_user(second, "second@example.com")
    copied = await copy_sqlite_to_postgres(first, postgres_url)
    assert ("users", 1, 1) in copied.counts
    with pytest.raises(CopyRefused, match=r"is not empty \(1 users\)"):
        await copy_sqlite_to_postgres(second, postgres_url)
    done = await run_copy(second, postgres_url, tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("marveld db copy: ")
    assert "is not empty (1 users): copy into a new, empty database" in done.stderr
    assert done.stderr.count("\n") == 1
    assert pg_rows(postgres_url, "SELECT email FROM users") == [("first@example.com",)]


async def test_a_missing_unreadable_or_old_source_is_one_clear_line(
    tmp_path: Path, postgres_url: str
) -> None:
    missing = tmp_path / "nowhere.db"
    done = await run_copy(missing, postgres_url, tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"marveld db copy: no SQLite database at {missing}\n"
    assert not missing.exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(CopyRefused, match=r"cannot read .*junk\.db"):
        await copy_sqlite_to_postgres(junk, postgres_url)
    old = tmp_path / "old.db"
    with closing(sqlite3.connect(old)) as conn:
        conn.execute("PRAGMA user_version = 2")
    sealed = digest(old)
    with pytest.raises(CopyRefused, match=r"older than this marveld's .*start marveld on it once"):
        await copy_sqlite_to_postgres(old, postgres_url)
    assert digest(old) == sealed
    assert pg_rows(postgres_url, "SELECT count(*) FROM users") == [(0,)]
    refused = await run_copy(old, "postgresql://u:secret@127.0.0.1:9/x", tmp_path)
    assert refused.returncode == 2
    assert "the URL holds a password" in refused.stderr
    assert "secret" not in refused.stderr


async def test_a_source_with_a_write_ahead_log_is_read_with_it(
    tmp_path: Path, postgres_url: str
) -> None:
    # As after a crash: commits still in the -wal file, not yet in the database file.
    source = tmp_path / "crashed.db"
    async with Store.open(source) as store:
        await store.users.create(
            name="Late",
            email="late@example.com",
            password_hash="$argon2id$x",
            now=datetime.now(UTC),
        )
        assert beside(source) == ["crashed.db-shm", "crashed.db-wal"]
        copied = await copy_sqlite_to_postgres(source, postgres_url)
    assert ("users", 1, 1) in copied.counts
    assert pg_rows(postgres_url, "SELECT email FROM users") == [("late@example.com",)]
