"""The two-tier cache as a user sees it, against the real simulator: fresh hits, the memory
and SQLite tiers, stale-while-revalidate, stale-if-error, negative caching, single-flight,
the daily budget, the circuit breaker and admin purges. Time moves by a clock the test
holds, never by sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from tests.calls import TIMEOUT, list_characters, register_and_login, status_of
from tests.conftest import Clock, Running, running_daemon
from tests.stores import open_store

pytestmark = pytest.mark.both_backends  # the service tests run on SQLite and PostgreSQL

HIT, MISS, STALE = pb.CacheStatus.HIT, pb.CacheStatus.MISS, pb.CacheStatus.STALE


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    """Until ``check()`` holds: for effects that happen in the daemon's background."""
    with trio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110 - the effect is behind gRPC: no event to await
            await trio.sleep(0.01)


def counter(metrics: str, sample: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_hits_come_from_memory_and_equivalent_queries_share_an_entry(
    marveld: Running, clock: Clock
) -> None:
    auth = await register_and_login(marveld)
    first = await list_characters(marveld, auth, name_starts_with="Iron")
    assert first.cache_status is MISS
    requests = marveld.sim.state.requests

    clock.advance(30)
    for spelling in ("iron", "  IRON ", "Iron"):
        page = await list_characters(marveld, auth, name_starts_with=spelling, limit=20)
        assert page.cache_status is HIT
        assert page.cache_age_seconds == 30
        assert [c.id for c in page.characters] == [c.id for c in first.characters]
    assert marveld.sim.state.requests == requests
    metrics = await marveld.metrics()
    assert counter(metrics, 'marveld_cache_requests_total{result="hit",tier="memory"}') == 3
    assert counter(metrics, 'marveld_cache_entries{tier="memory"}') == 1


async def test_stale_while_revalidate_serves_at_once_and_refreshes_once(
    marveld: Running, clock: Clock
) -> None:
    auth = await register_and_login(marveld)
    await list_characters(marveld, auth, name_starts_with="Spider")
    served = marveld.sim.state.served
    clock.advance(61)  # past the 60 s TTL, inside the 5 min revalidation window
    marveld.sim.state.latency_ms = 200  # keep the refresh in flight while we ask again

    for _ in range(3):
        stale = await list_characters(marveld, auth, name_starts_with="Spider")
        assert stale.cache_status is STALE
        assert stale.cache_age_seconds == 61

    async def refreshed() -> bool:
        page = await list_characters(marveld, auth, name_starts_with="Spider")
        return page.cache_status is HIT and page.cache_age_seconds == 0

    await eventually(refreshed)
    assert marveld.sim.state.served == served + 1  # one refresh (answered 304), not three


async def test_stale_if_error_and_then_unavailable(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> None:
    env = {
        "MARVELD_CACHE_TTL": "60s",
        "MARVELD_CACHE_STALE_WHILE_REVALIDATE": "10s",
        "MARVELD_CACHE_STALE_IF_ERROR": "5m",
    }
    async with running_daemon(nursery, sim, tmp_path, clock, **env, **database) as m:
        auth = await register_and_login(m)
        first = await list_characters(m, auth, name_starts_with="Spider")
        clock.advance(60 + 30)  # past revalidation: the upstream is asked first
        sim.state.fail_rate = 1.0

        stale = await list_characters(m, auth, name_starts_with="Spider")
        assert stale.cache_status is STALE
        assert stale.cache_age_seconds == 90
        assert [c.id for c in stale.characters] == [c.id for c in first.characters]

        clock.advance(300)  # past stale-if-error: too old to serve

        async def go(channel: Channel) -> object:
            return await pb.CharacterServiceStub(channel).list_characters(
                pb.ListCharactersRequest(name_starts_with="Spider"), metadata=auth, timeout=TIMEOUT
            )

        assert (await status_of(m, go)).status is Status.UNAVAILABLE

        sim.state.fail_rate = 0.0  # errors were never cached
        again = await list_characters(m, auth, name_starts_with="Spider")
        assert again.cache_status is MISS


async def test_empty_answers_are_cached_briefly(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> None:
    env = {"MARVELD_CACHE_NEGATIVE_TTL": "5s", "MARVELD_CACHE_STALE_WHILE_REVALIDATE": "1s"}
    async with running_daemon(nursery, sim, tmp_path, clock, **env, **database) as m:
        auth = await register_and_login(m)

        async def get_unknown(channel: Channel) -> object:
            return await pb.CharacterServiceStub(channel).get_character(
                pb.GetCharacterRequest(id=1), metadata=auth, timeout=TIMEOUT
            )

        empty = await list_characters(m, auth, name_starts_with="Zzzz-nobody")
        assert (empty.count, empty.cache_status) == (0, MISS)
        assert (await status_of(m, get_unknown)).status is Status.NOT_FOUND
        requests = sim.state.requests
        assert (await list_characters(m, auth, name_starts_with="zzzz-nobody")).cache_status is HIT
        assert (await status_of(m, get_unknown)).status is Status.NOT_FOUND
        assert sim.state.requests == requests

        clock.advance(6)  # the short negative TTL is over
        assert (await list_characters(m, auth, name_starts_with="Zzzz-nobody")).cache_status is MISS
        assert (await status_of(m, get_unknown)).status is Status.NOT_FOUND
        assert sim.state.requests == requests + 2


async def test_concurrent_identical_misses_make_one_upstream_call(marveld: Running) -> None:
    auth = await register_and_login(marveld)
    marveld.sim.state.latency_ms = 300
    requests = marveld.sim.state.requests

    async def fifty(channel: Channel) -> list[pb.CharacterPage]:
        stub = pb.CharacterServiceStub(channel)
        request = pb.ListCharactersRequest(name_starts_with="Spider", limit=7)
        return await asyncio.gather(
            *(stub.list_characters(request, metadata=auth, timeout=TIMEOUT) for _ in range(50))
        )

    pages = await marveld.client.call(fifty)
    assert marveld.sim.state.requests == requests + 1
    assert {p.cache_status for p in pages} == {MISS}
    assert len({tuple(c.id for c in p.characters) for p in pages}) == 1


async def test_the_sqlite_tier_survives_a_restart_and_warms_memory(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> None:
    seen: list[tuple[pb.CacheStatus, float, float]] = []
    for round_ in range(2):
        with trio.CancelScope() as scope:
            async with (
                trio.open_nursery() as inner,
                running_daemon(inner, sim, tmp_path, clock, **database) as m,
            ):
                auth = await register_and_login(m, f"round{round_}@example.com")
                page = await list_characters(m, auth, name="Iron Man")
                assert [c.id for c in page.characters] == [1009368]
                again = await list_characters(m, auth, name="Iron Man")
                assert again.cache_status is HIT
                metrics = await m.metrics()
                seen.append(
                    (
                        page.cache_status,
                        counter(
                            metrics, f'marveld_cache_requests_total{{result="hit",tier="{m.tier}"}}'
                        ),
                        counter(
                            metrics, 'marveld_cache_requests_total{result="hit",tier="memory"}'
                        ),
                    )
                )
                scope.cancel()
    assert seen == [(MISS, 0, 1), (HIT, 1, 1)]


async def test_the_daily_budget_is_never_exceeded_and_survives_a_restart(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> None:
    env = {"MARVELD_UPSTREAM_DAILY_BUDGET": "4", "MARVELD_UPSTREAM_POLLER_RESERVE": "1"}
    for round_ in range(2):
        with trio.CancelScope() as scope:
            async with (
                trio.open_nursery() as inner,
                running_daemon(inner, sim, tmp_path, clock, **env, **database) as m,
            ):
                auth = await register_and_login(m, f"budget{round_}@example.com")
                outcomes = [await outcome(m, auth, offset + 10 * round_) for offset in range(5)]
                metrics = await m.metrics()
                assert counter(metrics, "marveld_upstream_budget_remaining") == 1
                scope.cancel()
        # 3 calls (4 less the poller's reserve) a day, across a restart too.
        refused = "UNAVAILABLE: True"
        assert outcomes == (["ok"] * 3 + [refused] * 2 if round_ == 0 else [refused] * 5)
    assert sim.state.requests == 3


async def outcome(m: Running, auth: dict[str, str], offset: int) -> str:
    """ "ok", or the status name of a refusal that names the budget."""

    async def go(channel: Channel) -> object:
        return await pb.CharacterServiceStub(channel).list_characters(
            pb.ListCharactersRequest(offset=offset), metadata=auth, timeout=TIMEOUT
        )

    try:
        await m.client.call(go)
    except GRPCError as exc:
        return f"{exc.status.name}: {'budget' in (exc.message or '')}"
    return "ok"


async def health_of(m: Running, service: str) -> int:
    async def go(channel: Channel) -> int:
        reply = await HealthStub(channel).Check(
            HealthCheckRequest(service=service), timeout=TIMEOUT
        )
        assert reply is not None
        return int(reply.status)

    return await m.client.call(go)


async def test_the_breaker_opens_fails_fast_flips_health_and_closes(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> None:
    env = {"MARVELD_UPSTREAM_BREAKER_FAILURES": "2", "MARVELD_UPSTREAM_BREAKER_COOLDOWN": "30s"}
    async with running_daemon(nursery, sim, tmp_path, clock, **env, **database) as m:
        auth = await register_and_login(m)
        service = "marvel.v1.CharacterService"
        assert await health_of(m, service) == HealthCheckResponse.SERVING
        sim.state.fail_rate = 1.0

        def list_offset(offset: int) -> Callable[[Channel], Awaitable[object]]:
            async def go(channel: Channel) -> object:
                return await pb.CharacterServiceStub(channel).list_characters(
                    pb.ListCharactersRequest(offset=offset), metadata=auth, timeout=TIMEOUT
                )

            return go

        for offset in (1, 2):
            assert (await status_of(m, list_offset(offset))).status is Status.UNAVAILABLE
        assert await health_of(m, service) == HealthCheckResponse.NOT_SERVING
        assert await health_of(m, "") == HealthCheckResponse.SERVING  # the server as a whole
        requests = sim.state.requests
        refused = await status_of(m, list_offset(3))
        assert refused.status is Status.UNAVAILABLE
        assert "circuit open" in (refused.message or "")
        assert sim.state.requests == requests  # failed fast, the upstream was not asked
        assert counter(await m.metrics(), "marveld_upstream_breaker_open") == 1

        clock.advance(31)
        sim.state.fail_rate = 0.0
        page = await list_characters(m, auth, offset=4)  # the trial call
        assert page.cache_status is MISS
        assert await health_of(m, service) == HealthCheckResponse.SERVING
        assert counter(await m.metrics(), "marveld_upstream_breaker_open") == 0


async def make_admin(m: Running, email: str) -> None:
    async with open_store(m.settings) as store:
        await store.users.set_role(email, "admin", datetime.now(UTC))


async def purge(m: Running, auth: dict[str, str], **target: object) -> int:
    async def go(channel: Channel) -> int:
        reply = await pb.AdminServiceStub(channel).purge_cache(
            pb.PurgeCacheRequest(**target), metadata=auth, timeout=TIMEOUT
        )
        return int(reply.removed)

    return await m.client.call(go)


async def test_purge_needs_an_admin_and_drops_both_tiers(marveld: Running) -> None:
    user = await register_and_login(marveld, "user@example.com")
    admin = await register_and_login(marveld, "admin@example.com")
    await make_admin(marveld, "admin@example.com")
    admin = await register_and_login_again(marveld, "admin@example.com")

    async def as_user(channel: Channel) -> object:
        return await pb.AdminServiceStub(channel).purge_cache(
            pb.PurgeCacheRequest(all=True), metadata=user, timeout=TIMEOUT
        )

    assert (await status_of(marveld, as_user)).status is Status.PERMISSION_DENIED

    await list_characters(marveld, user, name_starts_with="Spider")
    await list_characters(marveld, user, name="Iron Man")
    await list_characters(marveld, user, limit=5)
    assert await purge(marveld, admin, character_id=1009610) == 1  # the Spider page holds him
    assert (await list_characters(marveld, user, name_starts_with="spider")).cache_status is MISS
    assert (await list_characters(marveld, user, name="Iron Man")).cache_status is HIT

    key = "characters?name=iron+man&nameStartsWith=&modifiedSince=&orderBy=name&limit=20&offset=0"
    assert await purge(marveld, admin, key=key) == 1
    assert (await list_characters(marveld, user, name="Iron Man")).cache_status is MISS

    assert await purge(marveld, admin, all=True) == 3
    assert (await list_characters(marveld, user, limit=5)).cache_status is MISS


async def register_and_login_again(m: Running, email: str) -> dict[str, str]:
    """A new token for an existing account (roles are read when a token is checked)."""

    async def go(channel: Channel) -> str:
        reply = await pb.AuthServiceStub(channel).login(
            pb.LoginRequest(email=email, password="correct horse battery"), timeout=TIMEOUT
        )
        return str(reply.access_token)

    return {"authorization": f"Bearer {await m.client.call(go)}"}


async def test_rpc_metrics_count_every_call_by_code(marveld: Running) -> None:
    auth = await register_and_login(marveld)
    await list_characters(marveld, auth, limit=3)
    await list_characters(marveld, auth, limit=3)

    async def bad(channel: Channel) -> object:
        return await pb.CharacterServiceStub(channel).list_characters(
            pb.ListCharactersRequest(limit=1000), metadata=auth, timeout=TIMEOUT
        )

    await status_of(marveld, bad)
    await health_of(marveld, "")
    metrics = await marveld.metrics()
    labels = 'grpc_method="ListCharacters",grpc_service="marvel.v1.CharacterService"'
    assert counter(metrics, f"grpc_server_started_total{{{labels}}}") == 3
    assert counter(metrics, f'grpc_server_handled_total{{grpc_code="OK",{labels}}}') == 2
    assert (
        counter(metrics, f'grpc_server_handled_total{{grpc_code="INVALID_ARGUMENT",{labels}}}') == 1
    )
    assert counter(metrics, f"grpc_server_handling_seconds_count{{{labels}}}") == 3
    health = 'grpc_method="Check",grpc_service="grpc.health.v1.Health"'
    assert counter(metrics, f'grpc_server_handled_total{{grpc_code="OK",{health}}}') == 1
