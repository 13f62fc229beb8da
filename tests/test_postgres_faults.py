"""PostgreSQL going away while the daemon runs, and coming back: the daemon on its own
throwaway server (tests/postgres.py), stopped (pg_ctl stop -m fast: every connection cut)
and started again on the same port, with real gRPC and HTTP clients."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_pb2 import HealthCheckResponse

from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from tests import postgres
from tests.aio import grpc_client
from tests.calls import (
    PASSWORD,
    TIMEOUT,
    list_characters,
    register,
    register_and_login,
    status_of,
)
from tests.conftest import Clock, Running
from tests.stores import rows_of
from tests.test_cache import health_of
from tests.test_notifications import start
from tests.waiting import wait_until

SERVING = HealthCheckResponse.ServingStatus.SERVING
NOT_SERVING = HealthCheckResponse.ServingStatus.NOT_SERVING


@pytest.fixture
def own_server(postgres_server: str) -> Iterator[postgres.Cluster]:
    """A cluster of this test's own (the session's server is shared: not to be stopped)."""
    if postgres.URL_VARIABLE in os.environ:
        pytest.skip("needs a server of its own to stop: not with MARVELD_TEST_POSTGRES_URL")
    folder = Path(tempfile.mkdtemp(prefix="marveld-pg-faults-"))
    folder.chmod(0o755)  # the server's user (postgres, when we are root) goes through it
    cluster = postgres.Cluster.start(folder / "cluster")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def daemon(
    nursery: trio.Nursery,
    sim: SimHandle,
    tmp_path: Path,
    clock: Clock,
    own_server: postgres.Cluster,
) -> AsyncIterator[Running]:
    m: Running = await start(nursery, sim, tmp_path, clock, MARVELD_DATABASE_URL=own_server.url)
    async with grpc_client(m.endpoints.grpc_port) as client:
        m.client = client
        yield m


async def profile(m: Running, auth: dict[str, str]) -> pb.UserProfile:
    async def go(channel: Channel) -> pb.UserProfile:
        return await pb.UserServiceStub(channel).get_my_profile(
            pb.GetMyProfileRequest(), metadata=auth, timeout=TIMEOUT
        )

    return await m.client.call(go)


async def readyz(m: Running) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{m.http}/readyz", timeout=10)).status_code


async def test_the_database_going_away_and_coming_back(
    daemon: Running, own_server: postgres.Cluster
) -> None:
    m = daemon
    auth = await register_and_login(m)
    cached = await list_characters(m, auth, name_starts_with="Hulk", limit=3)
    assert (await profile(m, auth)).email == "peter@example.com"
    assert await health_of(m, "") == SERVING

    await trio.to_thread.run_sync(own_server.stop)

    # Memory-tier hits are still served (and a token checked moments ago: GetMyProfile);
    # calls that need the database are UNAVAILABLE.
    again = await list_characters(m, auth, name_starts_with="Hulk", limit=3)
    assert again.cache_status is pb.CacheStatus.HIT
    assert [c.id for c in again.characters] == [c.id for c in cached.characters]
    error = await status_of(
        m,
        lambda ch: pb.AuthServiceStub(ch).register(  # a write: it needs the database
            pb.RegisterRequest(name="Vision", email="vision@example.com", password=PASSWORD),
            timeout=TIMEOUT,
        ),
    )
    assert error.status is Status.UNAVAILABLE
    assert "database is unavailable" in (error.message or "")

    async def not_serving() -> bool:
        return await health_of(m, "") == NOT_SERVING and await readyz(m) == 503

    await wait_until(not_serving, seconds=15, what="health NOT_SERVING and /readyz 503")

    await trio.to_thread.run_sync(own_server.restart)

    async def serving() -> bool:
        return await health_of(m, "") == SERVING and await readyz(m) == 200

    await wait_until(serving, seconds=15, what="health SERVING and /readyz 200 again")
    # Reconnected by itself; what was written before is there.
    assert (await profile(m, auth)).email == "peter@example.com"
    other = await register_and_login(m, "wanda@example.com")
    assert (await profile(m, other)).email == "wanda@example.com"


async def test_under_load_a_restart_of_the_server_loses_no_acknowledged_write(
    daemon: Running, own_server: postgres.Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Four writers register accounts and a reader repeats a cached list without pause
    while the server is stopped and started again: every registration that was answered
    OK is in the database afterwards, every refusal is UNAVAILABLE (never INTERNAL or
    UNKNOWN), and the cached list is served throughout."""
    m = daemon
    auth = await register_and_login(m)
    await list_characters(m, auth, name_starts_with="Hulk", limit=3)  # now in memory
    acknowledged: list[str] = []
    refused: Counter[Status] = Counter()
    hits: Counter[pb.CacheStatus] = Counter()

    async def writer(number: int) -> None:
        for i in itertools.count():
            email = f"writer{number}-{i}@example.com"
            try:
                await m.client.call(register(email))
            except GRPCError as error:
                refused[error.status] += 1
                await trio.sleep(0.01)  # the client's pause before its next try
            else:
                acknowledged.append(email)

    async def reader() -> None:
        while True:
            page = await list_characters(m, auth, name_starts_with="Hulk", limit=3)
            hits[page.cache_status] += 1

    def acknowledged_past(count: int) -> Callable[[], bool]:
        return lambda: len(acknowledged) >= count

    caplog.set_level(logging.INFO)
    async with trio.open_nursery() as load:
        for number in range(4):
            load.start_soon(writer, number)
        load.start_soon(reader)
        await wait_until(acknowledged_past(20), seconds=15, what="20 writes before the stop")

        await trio.to_thread.run_sync(own_server.stop)
        await wait_until(lambda: refused[Status.UNAVAILABLE] >= 8, seconds=15, what="refusals")
        hits_while_down = hits[pb.CacheStatus.HIT]
        await wait_until(
            lambda: hits[pb.CacheStatus.HIT] > hits_while_down + 10, what="hits while down"
        )

        await trio.to_thread.run_sync(own_server.restart)
        after_restart = len(acknowledged)
        await wait_until(
            acknowledged_past(after_restart + 20), seconds=30, what="20 writes after the start"
        )
        load.cancel_scope.cancel()

    assert set(refused) == {Status.UNAVAILABLE}
    assert set(hits) == {pb.CacheStatus.HIT}
    stored = {email for (email,) in await rows_of(m.settings, "SELECT email FROM users")}
    assert set(acknowledged) <= stored
    assert (await profile(m, auth)).email == "peter@example.com"
    # The pool's own warnings: one line a minute at most, each one line.
    pool_lines = [r.getMessage() for r in caplog.records if r.name == "psycopg.pool"]
    assert 1 <= len(pool_lines) <= 2, pool_lines
    assert all("\n" not in line for line in pool_lines)
