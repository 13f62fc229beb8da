"""Health on the HTTP port, matching grpc.health.v1.Health: /healthz is the process,
/readyz every readiness check (database, listeners, breaker); the registry on its own."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.health.v1.health_pb2 import HealthCheckResponse

from marveld.proto.marvel import v1 as pb
from marveld.services.readiness import Readiness
from marveld.sim import SimHandle
from tests.calls import TIMEOUT, list_characters, register_and_login, status_of
from tests.conftest import Clock, Running, running_daemon
from tests.test_cache import health_of

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
    assert await readiness.check() == {
        "plain": True,
        "ping": True,
        "no": False,
        "broken": False,
        "hangs": False,
    }
    assert "readiness check broken failed: OSError('disk gone')" in caplog.text
    assert "readiness check hangs took over 1 s" in caplog.text


def test_a_check_name_is_registered_once() -> None:
    readiness = Readiness()
    readiness.add("database", lambda: True)
    with pytest.raises(ValueError, match="database"):
        readiness.add("database", lambda: True)
