"""The read-through cache as a user sees it: fresh hits, expiry and revalidation, stale
pages when the upstream fails, and a cache that survives a restart. Time moves by a clock
the test holds, never by sleeping."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from marveld.proto.marvel import v1 as pb
from tests.aio import grpc_client
from tests.calls import list_characters, register_and_login
from tests.conftest import Clock, Running, make_settings, start_daemon


async def metrics_text(m: Running) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{m.http}/metrics")).text


async def test_expired_entry_is_revalidated_with_its_etag(marveld: Running, clock: Clock) -> None:
    auth = await register_and_login(marveld)
    first = await list_characters(marveld, auth, name_starts_with="Iron")
    assert first.cache_status is pb.CacheStatus.MISS

    clock.advance(30)
    fresh = await list_characters(marveld, auth, name_starts_with="iron ")
    assert fresh.cache_status is pb.CacheStatus.HIT
    assert fresh.cache_age_seconds == 30

    clock.advance(31)  # past the 60 s TTL
    served_before = marveld.sim.state.served
    again = await list_characters(marveld, auth, name_starts_with="Iron")
    assert again.cache_status is pb.CacheStatus.MISS
    assert again.cache_age_seconds == 0
    assert [c.id for c in again.characters] == [c.id for c in first.characters]
    assert marveld.sim.state.served == served_before + 1
    assert 'marveld_upstream_requests_total{outcome="not_modified"} 1.0' in await metrics_text(
        marveld
    )


async def test_stale_page_is_served_when_the_upstream_fails(marveld: Running, clock: Clock) -> None:
    auth = await register_and_login(marveld)
    first = await list_characters(marveld, auth, name_starts_with="Spider")
    clock.advance(90)
    marveld.sim.state.fail_rate = 1.0

    stale = await list_characters(marveld, auth, name_starts_with="Spider")
    assert stale.cache_status is pb.CacheStatus.STALE
    assert stale.cache_age_seconds == 90
    assert [c.id for c in stale.characters] == [c.id for c in first.characters]
    assert 'marveld_cache_requests_total{result="stale",tier="sqlite"} 1.0' in await metrics_text(
        marveld
    )


async def test_cache_survives_a_restart(nursery: trio.Nursery, sim: object, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, sim.url)  # type: ignore[attr-defined]
    for expected in (pb.CacheStatus.MISS, pb.CacheStatus.HIT):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                endpoints = await start_daemon(inner, settings)
                async with grpc_client(endpoints.grpc_port) as client:
                    running = Running(settings, endpoints, sim, client)  # type: ignore[arg-type]
                    email = f"{expected.name.lower()}@example.com"
                    auth = await register_and_login(running, email)
                    page = await list_characters(running, auth, name="Iron Man")
                    assert page.cache_status is expected
                    assert [c.id for c in page.characters] == [1009368]
                scope.cancel()
