"""The PostgreSQL backup of the operator's guide, run as written: ``pg_dump`` of the
database while a replica serves, ``pg_restore`` into an empty database, a replica started
on the restored one. What a user had is there: their account, the characters, their
notifications with the same cursors.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import psycopg
import pytest
import trio

from marveld.sim import SimHandle
from tests import postgres
from tests.calls import login, register_and_login
from tests.replicas import cluster
from tests.test_notifications import HULK, change, list_notifications
from tests.test_sync import make_admin, trigger_sync

pytestmark = pytest.mark.timeout(120)


def client_program(name: str) -> str:
    """``pg_dump`` or ``pg_restore``: the server's own (same version), else the one on PATH."""
    try:
        beside = postgres.bindir() / name
    except postgres.Unavailable:
        beside = None
    if beside is not None and beside.exists():
        return str(beside)
    if found := shutil.which(name):
        return found
    pytest.fail(f"{name} not found beside the PostgreSQL server or on PATH")


async def test_a_dump_taken_while_serving_restores_into_a_database_marveld_runs_on(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    dump = tmp_path / "marveld.dump"
    for folder in ("before", "after"):
        (tmp_path / folder).mkdir()
    async with cluster(tmp_path / "before", sim, postgres_url, n=1) as (r,):
        admin = await make_admin(r.m)
        await trigger_sync(r.m, admin)
        fan = await register_and_login(r.m, "fan@example.com")
        await change(r.m, HULK, "Changed before the backup.", webhook=False)
        await trigger_sync(r.m, admin)
        before = await list_notifications(r.m, fan)
        assert [n.character.description for n in before.notifications] == [
            "Changed before the backup."
        ]
        # While it serves: one consistent snapshot; the UNLOGGED tables' rows (fill
        # leases, login-throttle counts) are not worth keeping.
        await _run(
            client_program("pg_dump"),
            "--format=custom",
            "--no-unlogged-table-data",
            f"--file={dump}",
            postgres_url,
        )

    name = f"restored_{uuid.uuid4().hex[:12]}"
    restored = postgres.with_database(postgres_url, name)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        await _run(
            client_program("pg_restore"),
            "--no-owner",
            "--exit-on-error",
            f"--dbname={restored}",
            str(dump),
        )
        async with cluster(tmp_path / "after", sim, restored, n=1) as (r,):
            assert "migrated to schema version" not in r.log.read_text()  # it was current
            assert (await r.m.client.call(login("fan@example.com"))).access_token
            after = await list_notifications(r.m, fan)  # the same token: the same secret
            assert after.notifications == before.notifications
            assert after.next_cursor == before.next_cursor
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _run(*command: str) -> None:
    with trio.fail_after(60):
        done = await trio.run_process(command, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
