"""A call that reaches the character service while the daemon stops: the gRPC server may
still pass one on after the service's nursery has closed. The client hears UNAVAILABLE
(503 over HTTP), a retryable status, never INTERNAL; a stale answer is still served.

Found by the soak's SIGTERM under load (docs/reliability.md): two such calls had failed
with "RuntimeError: Nursery is closed to new arrivals".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from grpclib.const import Status

from marveld.domain import errors
from marveld.domain.cache_policy import CachePolicy
from marveld.domain.queries import CharacterQuery
from marveld.grpc import convert
from marveld.grpc.bridge import status_for
from marveld.metrics import Metrics
from marveld.services.characters import CacheStatus, CharacterService
from marveld.services.guard import CircuitBreaker
from marveld.services.memory_tier import MemoryTier
from marveld.sim import SimHandle
from marveld.sim.faults import Fault
from marveld.storage import Store
from marveld.upstream import MarvelClient, RetryPolicy
from marveld.web.problems import problem_for
from tests.conftest import PRIVATE_KEY, PUBLIC_KEY, Clock
from tests.waiting import wait_until

TTL = 60.0
POLICY = CachePolicy(ttl=TTL, stale_while_revalidate=600, stale_if_error=3600, negative_ttl=5)


@asynccontextmanager
async def service_of(
    sim: SimHandle, tmp_path: Path, clock: Clock
) -> AsyncIterator[CharacterService]:
    """A character service in front of ``sim``, not yet running."""
    async with (
        Store.open(tmp_path / "marveld.db") as store,
        service_on(sim, store, clock) as service,
    ):
        yield service


@asynccontextmanager
async def service_on(sim: SimHandle, store: Store, clock: Clock) -> AsyncIterator[CharacterService]:
    """A character service on ``store`` in front of ``sim``, not yet running."""
    async with MarvelClient.open(
        base_url=sim.url,
        public_key=PUBLIC_KEY,
        private_key=PRIVATE_KEY,
        retry=RetryPolicy(max_attempts=1, backoff_initial=0.01, backoff_max=0.01),
    ) as marvel:
        yield CharacterService(
            store,
            marvel,
            CircuitBreaker(failures=5, cooldown=30, clock=clock.monotonic),
            MemoryTier(max_entries=100, max_bytes=1 << 24),
            Metrics(),
            clock,
            policy=POLICY,
            encode=convert.encode_answer,
            sweep_interval=3600,
        )


@asynccontextmanager
async def stopped_service(
    sim: SimHandle, tmp_path: Path, clock: Clock
) -> AsyncIterator[CharacterService]:
    """A character service that answered one query (the first page) and whose ``run``
    has then ended, as when the daemon's nursery is cancelled."""
    async with service_of(sim, tmp_path, clock) as service:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            first = await service.list(CharacterQuery.parse())
            assert first.status is CacheStatus.MISS
            nursery.cancel_scope.cancel()
        yield service


@pytest.mark.parametrize("attempt", [1, 2])
async def test_a_miss_after_the_service_stopped_is_shutting_down(
    sim: SimHandle, tmp_path: Path, clock: Clock, attempt: int
) -> None:
    async with stopped_service(sim, tmp_path, clock) as service:
        with trio.fail_after(5):
            # Twice: the refused call leaves no half-made flight that a second one waits on.
            for _ in range(attempt):
                with pytest.raises(errors.ShuttingDown):
                    await service.list(CharacterQuery.parse(name_starts_with="Spider"))


async def test_a_stale_answer_is_served_without_a_refresh_after_the_service_stopped(
    sim: SimHandle, tmp_path: Path, clock: Clock
) -> None:
    async with stopped_service(sim, tmp_path, clock) as service:
        clock.advance(TTL + 1)
        with trio.fail_after(5):
            served = await service.list(CharacterQuery.parse())
        assert served.status is CacheStatus.STALE
        assert served.page.characters


async def test_a_miss_waiting_on_the_upstream_when_the_service_stops_is_shutting_down(
    sim: SimHandle, tmp_path: Path, clock: Clock
) -> None:
    sim.state.plan.script.append(Fault.TIMEOUT)  # the upstream call hangs until cancelled
    outcome: list[BaseException] = []

    async def caller(service: CharacterService) -> None:
        try:
            await service.list(CharacterQuery.parse())
        except errors.MarveldError as exc:
            outcome.append(exc)

    async with service_of(sim, tmp_path, clock) as service:
        with trio.fail_after(5):
            async with trio.open_nursery() as callers, trio.open_nursery() as nursery:
                await nursery.start(service.run)
                callers.start_soon(caller, service)
                await wait_until(
                    lambda: sim.state.plan.injected[Fault.TIMEOUT.value] == 1,
                    what="the upstream call to hang",
                )
                nursery.cancel_scope.cancel()
    assert [type(exc) for exc in outcome] == [errors.ShuttingDown]


def test_shutting_down_is_unavailable_on_both_faces() -> None:
    exc = errors.ShuttingDown()
    grpc = status_for(exc)
    assert grpc.status is Status.UNAVAILABLE
    assert grpc.message is not None
    assert "shutting down" in grpc.message
    problem = problem_for(exc)
    assert problem.status == 503
    assert "Retry-After" in problem.headers
