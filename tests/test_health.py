"""Health on the HTTP port, matching grpc.health.v1.Health: /healthz is the process,
/readyz every readiness check (database, listeners, breaker); the registry on its own."""

from __future__ import annotations

import logging
import threading
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.health.v1.health_pb2 import HealthCheckResponse

from marveld.proto.marvel import v1 as pb
from marveld.services.readiness import Readiness, watch_database
from marveld.sim import SimHandle
from tests.calls import TIMEOUT, list_characters, register_and_login, status_of
from tests.conftest import Clock, Running, running_daemon
from tests.test_cache import health_of
from tests.waiting import wait_until

pytestmark = pytest.mark.both_backends  # the service tests run on SQLite and PostgreSQL

SERVICE = "marvel.v1.CharacterService"


async def get(m: Running, path: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=m.http, timeout=TIMEOUT) as http:
        return await http.get(path)


async def test_healthz_is_the_process_and_readyz_every_check(marveld: Running) -> None:
    healthz = await get(marveld, "/healthz")
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})
    readyz = await get(marveld, "/readyz")
    assert readyz.status_code == 200
    checks = {"database": True, "listeners": True, "breaker": True, "accepting": True}
    if marveld.tier == "postgresql":  # replicas may share it: the others' signals are heard
        checks["signals"] = True
    assert readyz.json() == {
        "status": "ready",
        # The first sync is reported but does not gate readiness (requests read through).
        "checks": {**checks, "first_sync": False},
    }


async def test_readyz_follows_the_grpc_health_of_the_character_service(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> None:
    env = {"MARVELD_UPSTREAM_BREAKER_FAILURES": "1", "MARVELD_UPSTREAM_BREAKER_COOLDOWN": "30s"}
    async with running_daemon(nursery, sim, tmp_path, clock, **env, **database) as m:
        auth = await register_and_login(m)
        sim.state.fail_rate = 1.0

        async def one_miss(channel: Channel) -> pb.CharacterPage:
            return await pb.CharacterServiceStub(channel).list_characters(
                pb.ListCharactersRequest(offset=7), metadata=auth, timeout=TIMEOUT
            )

        assert (await status_of(m, one_miss)).status is Status.UNAVAILABLE
        assert await health_of(m, SERVICE) == HealthCheckResponse.NOT_SERVING
        readyz = await get(m, "/readyz")
        assert readyz.status_code == 503
        assert readyz.json()["status"] == "not ready"
        assert readyz.json()["checks"]["breaker"] is False
        assert (await get(m, "/healthz")).status_code == 200  # alive all the same

        clock.advance(31)
        sim.state.fail_rate = 0.0
        await list_characters(m, auth, offset=8)  # the trial call closes the breaker
        assert await health_of(m, SERVICE) == HealthCheckResponse.SERVING
        assert (await get(m, "/readyz")).status_code == 200


# --- the registry -----------------------------------------------------------------------------


async def test_a_check_passes_unless_it_says_false_raises_or_hangs(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async def ping() -> None:
        return None

    async def broken() -> None:
        raise OSError("disk gone")

    async def hangs() -> bool:
        await trio.sleep_forever()

    readiness = Readiness(seconds=1)
    readiness.add("plain", lambda: True)
    readiness.add("ping", ping)
    readiness.add("no", lambda: False)
    readiness.add("broken", broken)
    readiness.add("hangs", hangs)
    assert readiness.names == ("plain", "ping", "no", "broken", "hangs")
    async with trio.open_nursery() as nursery:
        await nursery.start(readiness.run)
        assert await readiness.check() == {
            "plain": True,
            "ping": True,
            "no": False,
            "broken": False,
            "hangs": False,
        }
        nursery.cancel_scope.cancel()
    assert "readiness check broken failed: OSError('disk gone')" in caplog.text
    assert "readiness check hangs took over 1 s" in caplog.text


async def test_a_check_stuck_in_a_worker_thread_fails_without_holding_the_answer() -> None:
    """A database call waits in a thread trio cannot cancel (a pool waiting for a server
    that is gone): /readyz still answers, and probes do not pile up behind it."""
    release = threading.Event()
    calls = []

    async def stuck() -> bool:
        calls.append(1)
        return await trio.to_thread.run_sync(release.wait)

    readiness = Readiness(seconds=0.2)
    readiness.add("stuck", stuck)
    readiness.add("plain", lambda: True)
    with trio.fail_after(10):  # the thread is released only after both answers
        async with trio.open_nursery() as nursery:
            await nursery.start(readiness.run)
            assert await readiness.check() == {"stuck": False, "plain": True}
            assert await readiness.check() == {"stuck": False, "plain": True}
            assert calls == [1]  # the second probe did not start another
            release.set()
            await wait_until(lambda: not readiness.running, what="the thread back")
            assert await readiness.check() == {"stuck": True, "plain": True}
            nursery.cancel_scope.cancel()


async def test_a_check_before_the_registry_runs_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match=r"before Readiness\.run"):
        await Readiness().check()


def test_a_check_name_is_registered_once() -> None:
    readiness = Readiness()
    readiness.add("database", lambda: True)
    with pytest.raises(ValueError, match="database"):
        readiness.add("database", lambda: True)


async def test_the_database_watcher_reports_a_stuck_or_failing_ping_and_its_return(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What /readyz and grpc health follow: a ping stuck in its worker thread (reported at
    the patience, not when the thread returns), one that answers, one that raises."""
    caplog.set_level(logging.INFO, "marveld.services.readiness")
    release = threading.Event()
    pings = ["stuck", "answer", "raise"]
    changes: list[bool] = []

    async def ping() -> None:
        what = pings.pop(0) if pings else "raise"
        if what == "stuck":
            await trio.to_thread.run_sync(release.wait)
        elif what == "raise":
            raise OSError("server closed the connection")

    def changed(reachable: bool) -> None:
        changes.append(reachable)
        release.set()  # the stuck ping was reported while its thread still waited

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(watch_database, ping, changed, interval=0.01, patience=0.2))
            await wait_until(lambda: changes == [False, True, False], what="down, up, down")
            nursery.cancel_scope.cancel()
    assert "the database is unreachable (no answer within 0.2 s): not serving" in caplog.text
    assert "the database answers again: serving" in caplog.text
    assert "unreachable (server closed the connection)" in caplog.text
