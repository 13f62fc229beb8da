"""The upstream's protections on their own, with clocks the tests move: the daily budget
and the circuit breaker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from marveld.domain.errors import NotFound, UpstreamError, UpstreamRejected, UpstreamUnavailable
from marveld.services.guard import BreakerState, BudgetSpent, CallBudget, CircuitBreaker
from marveld.storage import Store
from tests.conftest import make_settings
from tests.stores import open_store


class Now:
    def __init__(self) -> None:
        self.value = datetime(2026, 11, 24, 23, 59, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.value


async def test_requests_stop_short_of_the_pollers_reserve_and_the_budget_renews_daily() -> None:
    now = Now()
    remaining: list[int] = []
    budget = CallBudget(daily=5, poller_reserve=2, clock=now, on_change=remaining.append)
    for _ in range(3):
        await budget.spend("request")
    with pytest.raises(BudgetSpent) as info:
        await budget.spend("request")
    assert "kept for the poller" in str(info.value)
    assert info.value.retry_after == 60.0  # one minute to UTC midnight
    await budget.spend("poller")
    await budget.spend("poller")
    with pytest.raises(BudgetSpent):
        await budget.spend("poller")
    assert budget.remaining == 0
    assert remaining[-1] == 0

    now.value += timedelta(minutes=2)  # a new UTC day
    assert budget.remaining == 5
    await budget.spend("request")
    assert budget.used == 1


async def test_spending_survives_a_restart(tmp_path: Path) -> None:
    now = Now()
    async with Store.open(tmp_path / "m.db") as store:
        for expected_used in (2, 4):
            budget = CallBudget(daily=10, poller_reserve=0, clock=now)
            async with trio.open_nursery() as nursery:
                await nursery.start(budget.keep, store)
                await budget.spend("request")
                await budget.spend("request")
                with trio.fail_after(5):
                    while await store.sync_state.get("upstream_budget") != {  # noqa: ASYNC110
                        "day": "2026-11-24",
                        "used": expected_used,
                    }:
                        await trio.sleep(0.001)
                nursery.cancel_scope.cancel()
        now.value += timedelta(days=1)
        tomorrow = CallBudget(daily=10, poller_reserve=0, clock=now)
        async with trio.open_nursery() as nursery:
            await nursery.start(tomorrow.keep, store)
            assert tomorrow.used == 0
            nursery.cancel_scope.cancel()


@pytest.mark.both_backends
async def test_a_shared_budget_holds_for_every_replica_on_the_database_and_a_restart(
    tmp_path: Path, database: dict[str, str]
) -> None:
    """Three stores on one database stand for three replicas; 3 x 40 calls race for a
    budget of 50 (10 kept for the poller): exactly 40 requests and then the poller's 10 are
    taken, and budgets made afresh (a restart of all three) take nothing more today."""
    now = Now()
    settings = make_settings(tmp_path, "http://127.0.0.1:9/v1/public", **database)
    async with (
        open_store(settings) as a,
        open_store(settings) as b,
        open_store(settings) as c,
    ):
        taken = {"request": 0, "poller": 0}
        refused = 0

        async def replica(store: Store, purpose: str, calls: int) -> None:
            nonlocal refused
            budget = CallBudget(daily=50, poller_reserve=10, clock=now, shared=True)
            async with trio.open_nursery() as nursery:
                await nursery.start(budget.keep, store)

                async def one() -> None:
                    nonlocal refused
                    try:
                        await budget.spend(purpose)
                    except BudgetSpent:
                        refused += 1
                    else:
                        taken[purpose] += 1

                for _ in range(calls):
                    nursery.start_soon(one)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for store in (a, b, c):
                    nursery.start_soon(replica, store, "request", 40)
            assert (taken["request"], refused) == (40, 80)
            async with trio.open_nursery() as nursery:
                for store in (a, b, c):
                    nursery.start_soon(replica, store, "poller", 5)
            assert taken["poller"] == 10
            for store in (a, b, c):  # restarted: nothing left today, for anyone
                await replica(store, "poller", 1)
            assert (taken["poller"], refused) == (10, 80 + 5 + 3)
        assert await a.sync_state.get("upstream_budget") == {"day": "2026-11-24", "used": 50}

        now.value += timedelta(days=1)
        await replica(b, "request", 1)
        assert taken["request"] == 41


def state(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state


class Monotonic:
    def __init__(self) -> None:
        self.value = 100.0

    def __call__(self) -> float:
        return self.value


def fails(exc: Exception) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        raise exc

    return call


async def ok() -> str:
    return "ok"


async def test_the_breaker_opens_after_repeated_failures_and_closes_after_a_good_trial() -> None:
    clock = Monotonic()
    changes: list[bool] = []
    breaker = CircuitBreaker(failures=3, cooldown=10, clock=clock, on_change=changes.append)
    down = UpstreamUnavailable("down")
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            await breaker.call(fails(down))
    assert await breaker.call(ok) == "ok"  # a success resets the count
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await breaker.call(fails(UpstreamError("malformed")))
    assert state(breaker) is BreakerState.OPEN
    assert changes == [False]

    with pytest.raises(UpstreamUnavailable, match="circuit open") as info:
        await breaker.call(ok)
    assert info.value.retry_after == 10

    clock.value += 10  # the trial fails: open again, for a new cooldown
    with pytest.raises(UpstreamUnavailable):
        await breaker.call(fails(down))
    assert state(breaker) is BreakerState.OPEN
    with pytest.raises(UpstreamUnavailable, match="circuit open"):
        await breaker.call(ok)

    clock.value += 10
    assert await breaker.call(ok) == "ok"
    assert state(breaker) is BreakerState.CLOSED
    assert changes == [False, True]


async def test_answers_and_our_own_limits_are_not_upstream_failures() -> None:
    breaker = CircuitBreaker(failures=1, cooldown=10, clock=Monotonic())
    for harmless in (
        NotFound("no such character"),
        UpstreamRejected("bad request", status=409, code=409),
        BudgetSpent("spent", retry_after=5),
        ValueError("a bug of ours"),
    ):
        with pytest.raises(type(harmless)):
            await breaker.call(fails(harmless))
        assert state(breaker) is BreakerState.CLOSED


async def test_one_trial_at_a_time_while_half_open() -> None:
    clock = Monotonic()
    breaker = CircuitBreaker(failures=1, cooldown=5, clock=clock)
    with pytest.raises(UpstreamUnavailable):
        await breaker.call(fails(UpstreamUnavailable("down")))
    clock.value += 5
    release = trio.Event()

    async def slow_trial() -> str:
        await release.wait()
        return "ok"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(breaker.call, slow_trial)
        await trio.testing.wait_all_tasks_blocked()
        assert state(breaker) is BreakerState.HALF_OPEN
        with pytest.raises(UpstreamUnavailable, match="half-open"):
            await breaker.call(ok)
        release.set()
    assert state(breaker) is BreakerState.CLOSED
