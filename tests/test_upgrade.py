"""A rolling upgrade on PostgreSQL: replicas of the previous release and of this one side by
side on one migrated database (expand, then contract: marveld/storage/postgres/schema.py).

The previous release is commit :data:`PREVIOUS` (the last landed main), taken out of git
into a temp folder and run as ``python -m marveld serve`` by the same interpreter, its
folder first on the import path. Without git or that commit the tests skip with one line;
under CI (``CI`` set) they fail instead, as the PostgreSQL tests do. Every process started
is killed on the way out; every wait is bounded.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio

from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from marveld.storage.errors import SchemaTooNew
from marveld.storage.postgres.schema import LATEST_VERSION, MIGRATIONS, migrate
from tests import postgres
from tests.calls import list_characters, login, register
from tests.conftest import daemon_env
from tests.notify_clients import grpc_stream
from tests.replicas import ROOT, Replica, start_replica
from tests.test_notifications import HULK, change
from tests.test_sync import make_admin, search, trigger_sync

pytestmark = pytest.mark.timeout(150)

PREVIOUS = "9a69bc0"  # the previous release (its newest schema version is 2); move it on
PREVIOUS_SCHEMA = 2
TEST_SECONDS = 120
EXIT_SECONDS = 30


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the previous release's ``marveld`` package (``git archive``)."""
    git = shutil.which("git")
    reason = None
    if git is None:
        reason = "no git command"
    else:
        found = subprocess.run(
            [git, "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"],
            capture_output=True,
        )
        if found.returncode != 0:
            reason = f"commit {PREVIOUS} is not in this checkout's history"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the upgrade tests must run under CI: {reason}")
        pytest.skip(f"previous release: {reason}")
    assert git is not None
    folder = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(
        [git, "-C", str(ROOT), "archive", PREVIOUS, "marveld"], capture_output=True, check=True
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def previous(folder: Path) -> dict[str, str]:
    """The environment that makes ``python -m marveld`` run the release in ``folder``: its
    folder first on the path, and not the working directory (this release)."""
    return {"PYTHONPATH": str(folder), "PYTHONSAFEPATH": "1"}


@pytest.fixture
def empty_url(postgres_server: str) -> Iterator[str]:
    """A fresh database marveld never migrated, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres.with_database(postgres_server, name)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def schema_row(url: str) -> tuple[int, ...]:
    """``marveld_schema``'s row: (version,), or (version, compatible_from, compatible_as_of)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT * FROM marveld_schema").fetchone()
    assert row is not None
    return tuple(row[1:])


async def refusal(
    tmp_path: Path, sim: SimHandle, url: str, name: str, **env: str
) -> tuple[int, str]:
    """``marveld serve`` on ``url`` as a replica would start; its exit status and stderr
    (it must exit by itself)."""
    environ = {
        **os.environ,
        **daemon_env(tmp_path, sim.url),
        "MARVELD_DATABASE_URL": url,
        "MARVELD_REPLICA_ID": name,
        "MARVELD_LOG_FORMAT": "text",
        **env,
    }
    del environ["MARVELD_DATABASE_PATH"]
    config = tmp_path / "refused.toml"
    config.touch()
    with trio.fail_after(EXIT_SECONDS):
        done = await trio.run_process(
            [sys.executable, "-m", "marveld", "serve", "--config", str(config)],
            env=environ,
            cwd=ROOT,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stderr.decode()


def test_each_migration_says_which_releases_may_run_on_what_it_leaves(empty_url: str) -> None:
    """The rule in code: compatible_from never goes down (a contract cannot be undone) and
    never passes its own version; the version bump writes it."""
    oldest = [m.compatible_from for m in MIGRATIONS]
    assert oldest == sorted(oldest)
    assert all(1 <= c <= version for version, c in enumerate(oldest, start=1))
    with psycopg.connect(empty_url, autocommit=True) as conn:
        assert migrate(conn, name="fresh") == LATEST_VERSION
    assert schema_row(empty_url) == (LATEST_VERSION, oldest[-1], LATEST_VERSION)


async def _register_here_login_there(here: Replica, there: Replica, email: str) -> None:
    await here.m.client.call(register(email))
    reply = await there.m.client.call(login(email))
    assert reply.access_token


async def _token(at: Replica, email: str) -> dict[str, str]:
    reply = await at.m.client.call(login(email))
    return {"authorization": f"Bearer {reply.access_token}"}


def _answers(page: pb.CharacterPage) -> list[tuple[int, str, str]]:
    return [(c.id, c.name, c.description) for c in page.characters]


async def _notified_across(
    subscriber: Replica, auth: dict[str, str], through: Replica, admin: dict[str, str], text: str
) -> None:
    """A change synced through ``through`` reaches a Subscribe stream on ``subscriber``."""
    async with grpc_stream(subscriber.m.client, auth) as stream:
        first = await stream.next(seconds=10, heartbeats=True)  # the stream is live
        assert isinstance(first, pb.Notification)
        await change(through.m, HULK, text, webhook=False)
        assert (await trigger_sync(through.m, admin)).updated == 1
        note = await stream.next(seconds=20)
        assert isinstance(note, pb.Notification)
        assert (note.character.id, note.character.description) == (HULK, text)


async def test_the_previous_release_keeps_serving_beside_this_one_on_the_migrated_database(
    sim: SimHandle, tmp_path: Path, empty_url: str, previous_release: Path
) -> None:
    with trio.fail_after(TEST_SECONDS):
        old, old_stack = await start_replica(
            tmp_path, sim, empty_url, "old", None, **previous(previous_release)
        )
        try:
            assert schema_row(empty_url) == (PREVIOUS_SCHEMA,)  # the previous release's code
            new, new_stack = await start_replica(tmp_path, sim, empty_url, "new")
            try:
                # This release migrated the database under the old replica's feet.
                assert schema_row(empty_url) == (LATEST_VERSION, 1, LATEST_VERSION)
                assert f"migrated to schema version {LATEST_VERSION}" in new.log.read_text()
                assert old.alive

                await _register_here_login_there(old, new, "from-old@example.com")
                await _register_here_login_there(new, old, "from-new@example.com")

                admin = await make_admin(new.m)
                assert (await trigger_sync(old.m, admin)).added == 40
                hulks = [
                    await list_characters(r.m, admin, name_starts_with="Hulk") for r in (old, new)
                ]
                assert _answers(hulks[0]) == _answers(hulks[1]) != []
                found = [await search(r.m, admin, "hulk") for r in (old, new)]
                assert _answers(found[0]) == _answers(found[1]) != []

                on_new = await _token(new, "from-old@example.com")
                await _notified_across(new, on_new, old, admin, "Synced through the old one.")
                on_old = await _token(old, "from-new@example.com")
                await _notified_across(old, on_old, new, admin, "Synced through the new one.")
                assert old.alive
                assert new.alive
                for r in (old, new):  # nothing went wrong on either, quietly
                    assert " ERROR " not in r.log.read_text()
                    assert "Traceback" not in r.log.read_text()
            finally:
                await new_stack.aclose()
        except BaseException:
            print(f"--- the previous release's log ---\n{old.log.read_text()[-6000:]}")
            raise
        finally:
            await old_stack.aclose()


async def test_the_previous_release_restarted_on_the_migrated_database_refuses_it(
    sim: SimHandle, tmp_path: Path, postgres_url: str, previous_release: Path
) -> None:
    status, stderr = await refusal(tmp_path, sim, postgres_url, "old", **previous(previous_release))
    assert status == 1, stderr  # cli.py: a CannotStart is one log line and exit status 1
    assert (
        f"cannot start: database {postgres_url} has schema version {LATEST_VERSION}, newer "
        f"than the newest this marveld knows ({PREVIOUS_SCHEMA}); upgrade marveld or point "
        "it at another database file"
    ) in stderr
    assert schema_row(postgres_url)[0] == LATEST_VERSION  # untouched


FUTURE = LATEST_VERSION + 1


def _future(url: str, compatible_from: int) -> None:
    """What a future release's migration leaves: an added column and table, the version."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("ALTER TABLE users ADD COLUMN IF NOT EXISTS nickname text")
        conn.execute("CREATE TABLE IF NOT EXISTS future_things (id bigint PRIMARY KEY)")
        conn.execute(
            "UPDATE marveld_schema SET version = %s, compatible_from = %s, compatible_as_of = %s",
            (FUTURE, compatible_from, FUTURE),
        )


async def test_this_release_runs_on_what_a_newer_one_only_added_to_and_refuses_a_contract(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    with trio.fail_after(TEST_SECONDS):
        _future(postgres_url, compatible_from=LATEST_VERSION)
        replica, stack = await start_replica(tmp_path, sim, postgres_url, "r1")
        async with stack:
            await _register_here_login_there(replica, replica, "peter@example.com")
            auth = await _token(replica, "peter@example.com")
            assert (await list_characters(replica.m, auth, name_starts_with="Hulk")).characters
            assert (
                f"database {postgres_url} is at schema version {FUTURE}, written by a newer "
                f"marveld; this release (schema {LATEST_VERSION}) may run on it: its "
                f"migrations since {LATEST_VERSION} only add"
            ) in replica.log.read_text()
        assert schema_row(postgres_url) == (FUTURE, LATEST_VERSION, FUTURE)  # left as it was

        _future(postgres_url, compatible_from=FUTURE)  # a contract migration
        status, stderr = await refusal(tmp_path, sim, postgres_url, "r2")
        assert status == 1, stderr
        assert (
            f"cannot start: database {postgres_url} has schema version {FUTURE}, newer than "
            f"the newest this marveld knows ({LATEST_VERSION}), and needs a marveld of "
            f"schema version {FUTURE} or later"
        ) in stderr


def test_a_version_moved_without_saying_who_may_run_on_it_is_refused(postgres_url: str) -> None:
    """Compatibility is only what the version bump wrote for that version: a version moved
    by hand (compatible_as_of left behind) says nothing, so this release refuses."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE marveld_schema SET version = %s", (FUTURE,))
        with pytest.raises(SchemaTooNew) as refused:
            migrate(conn, name="db.internal/marveld")
    assert refused.value.needs is None
    assert str(refused.value) == (
        f"database db.internal/marveld has schema version {FUTURE}, newer than the newest "
        f"this marveld knows ({LATEST_VERSION}); upgrade marveld or point it at another "
        "database file"
    )
