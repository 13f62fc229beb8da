"""A PostgreSQL failover under running replicas: the primary is lost, its streaming standby
is promoted, and marveld carries on on the new primary without a restart.

The replicas are given libpq's multi-host URL (both servers, ``target_session_attrs=
read-write``), as docs/scale-out.md tells operators to: every new connection finds the
server that takes writes. The test crashes the primary (immediate shutdown, as a lost
host), promotes the standby over SQL, and checks what a user notices: the replicas say
NOT_SERVING while there is no primary, then serve again; one of them leads; both listen;
an account made before the failover logs in after it; a WebSocket subscriber resumes from
its cursor and gets the change made after the failover, nothing twice.

The pair is a primary and a standby of its own (tests/postgres.py ``start_pair``), or the
pair CI started before its sandboxed run, named by MARVELD_TEST_POSTGRES_PAIR (that run may
not switch users, and PostgreSQL refuses root). Skips with one line where PostgreSQL cannot
be had; fails instead under CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from marveld.sim import SimHandle
from tests import postgres
from tests.calls import login, register_and_login
from tests.notify_clients import websocket, ws_next
from tests.replicas import Replica, cluster, leaders, subscribed
from tests.test_notifications import HULK, change
from tests.test_sync import make_admin, trigger_sync
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

BEFORE, AFTER = "Changed before the failover.", "Changed after the failover."


@pytest.fixture
def pair() -> Iterator[tuple[postgres.Cluster, postgres.Cluster]]:
    """A primary and its streaming standby, serving."""
    if named := os.environ.get(postgres.PAIR_VARIABLE):
        yield postgres.pair_at(Path(named))
        return
    parent = Path(tempfile.mkdtemp(prefix="marveld-failover-"))
    parent.chmod(0o755)  # as root the servers run as the postgres user, which must reach it
    try:
        started = postgres.start_pair(parent / "pair")
    except postgres.Unavailable as exc:
        shutil.rmtree(parent, ignore_errors=True)
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests must run under CI: {exc}")
        pytest.skip(f"PostgreSQL: {exc}")
    try:
        yield started
    finally:
        postgres.stop_pair(parent / "pair")
        shutil.rmtree(parent, ignore_errors=True)


async def test_a_promoted_standby_takes_over_and_the_replicas_reconnect_relisten_reelect(
    sim: SimHandle, tmp_path: Path, pair: tuple[postgres.Cluster, postgres.Cluster]
) -> None:
    primary, standby = pair
    with psycopg.connect(primary.url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE marveld")
    url = (
        f"postgresql://{postgres.ROLE}@127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
        "/marveld?target_session_attrs=read-write&connect_timeout=2"
    )
    async with cluster(tmp_path, sim, url, n=2) as replicas:
        a, b = replicas
        admin = await make_admin(a.m)
        await trigger_sync(a.m, admin)  # the bulk import: no notifications
        fan = await register_and_login(a.m, "fan@example.com")
        got: list[tuple[int, str]] = []

        with trio.fail_after(150):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_follow, b, fan, got)
                await wait_until(partial(subscribed, [b], 1), seconds=10, what="the subscriber")
                await change(a.m, HULK, BEFORE, webhook=False)
                await trigger_sync(a.m, admin)
                await wait_until(lambda: len(got) == 1, seconds=10, what="the first change")

                await _caught_up(primary, standby)  # asynchronous replication: see the docs
                primary.crash()
                for r in replicas:
                    await wait_until(
                        partial(_ready, r, False), seconds=10, what=f"{r.name} NOT_SERVING"
                    )
                standby.promote()
                for r in replicas:
                    await wait_until(partial(_ready, r, True), seconds=30, what=f"{r.name} ready")
                await wait_until(partial(_one_leader, replicas), seconds=10, what="one leader")
                for r in replicas:
                    assert await r.metric("marveld_listening") == 1.0
                    assert "listening to the other replicas again" in r.log.read_text()

                # The account made on the old primary is there, on either replica.
                reply = await b.m.client.call(login("fan@example.com"))
                assert reply.access_token
                await change(b.m, HULK, AFTER, webhook=False)
                await trigger_sync(b.m, admin)
                await wait_until(lambda: len(got) == 2, seconds=20, what="the second change")
                nursery.cancel_scope.cancel()

    assert [text for _, text in got] == [BEFORE, AFTER]
    assert got[0][0] < got[1][0]


async def _follow(at: Replica, auth: dict[str, str], got: list[tuple[int, str]]) -> None:
    """A WebSocket subscriber as a client would write one: when its connection ends it
    reconnects (a moment later) with the cursor of the last notification it has."""
    while True:
        query = f"?access_token={auth['authorization'][7:]}"
        if got:
            query += f"&after_cursor={got[-1][0]}"
        with contextlib.suppress(OSError, ConnectionClosed, HandshakeError):
            async with websocket(at.m.endpoints.http_port, query) as ws:
                while True:
                    message = await ws_next(ws, seconds=60)
                    got.append((int(message["cursor"]), message["character"]["description"]))
        await trio.sleep(0.2)  # a client's reconnect backoff, not a wait for readiness


async def _caught_up(primary: postgres.Cluster, standby: postgres.Cluster) -> None:
    """Wait until the standby has replayed everything the primary has written."""
    with psycopg.connect(primary.url, autocommit=True) as conn:
        (lsn,) = conn.execute("SELECT pg_current_wal_lsn()").fetchone() or ("0/0",)

    async def replayed() -> bool:
        with psycopg.connect(standby.url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,))
            return (row.fetchone() or (False,))[0] is True

    await wait_until(replayed, seconds=10, what="the standby caught up")


async def _ready(r: Replica, wanted: bool) -> bool:
    async with httpx.AsyncClient(timeout=5) as http:
        return ((await http.get(f"{r.m.http}/readyz")).status_code == 200) is wanted


async def _one_leader(replicas: list[Replica]) -> bool:
    return len(await leaders(replicas)) == 1
