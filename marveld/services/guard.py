"""Upstream protection: a daily call budget no traffic can exceed, and a circuit breaker.

The budget is checked before every HTTP attempt (retries count: they cost the key's quota
too); the breaker wraps whole calls, opens after repeated failures and then fails fast.

On a database several replicas share (PostgreSQL) the budget is the cluster's: each call is
taken from the stored count in one locked transaction, so N replicas together never spend
more than ``daily``. On SQLite (one process) it is counted in memory and saved behind. The
breaker is each replica's own: it judges the upstream as that replica sees it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import TypeVar

import trio

from marveld.domain.errors import UpstreamError, UpstreamRejected, UpstreamUnavailable
from marveld.storage import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
POLLER = "poller"
BUDGET_STATE_KEY = "upstream_budget"


class BudgetSpent(UpstreamUnavailable):
    """Today's upstream calls are used up; marveld makes no more until UTC midnight."""


class CallBudget:
    """``daily`` calls per UTC day; the last ``poller_reserve`` of them only for the poller.
    ``shared``: the count lives in the store (:meth:`keep`) and every call is taken there,
    for replicas that share one database."""

    def __init__(
        self,
        *,
        daily: int,
        poller_reserve: int,
        clock: Callable[[], datetime],
        on_change: Callable[[int], None] | None = None,
        shared: bool = False,
    ) -> None:
        self._daily = daily
        self._reserve = poller_reserve
        self._clock = clock
        self._on_change = on_change
        self._shared = shared
        self._store: Store | None = None
        self._day = clock().astimezone(UTC).date()
        self._used = 0
        self._dirty = trio.Event()

    @property
    def day(self) -> date:
        return self._day

    @property
    def used(self) -> int:
        self._roll()
        return self._used

    @property
    def remaining(self) -> int:
        return self._daily - self.used

    async def keep(
        self, store: Store, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Load today's spending from the store, then save it whenever it changes, so a
        restart cannot grant a fresh budget. The write after the last call may be lost in a
        crash; nothing else is. Shared, the store is where :meth:`spend` takes each call:
        loaded, it returns."""
        saved = await store.sync_state.get(BUDGET_STATE_KEY)
        if isinstance(saved, dict) and saved.get("day") == self._day.isoformat():
            self._used = max(self._used, int(saved.get("used", 0)))
        self._changed()
        self._store = store
        task_status.started()
        if self._shared:
            return
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            state = {"day": self._day.isoformat(), "used": self._used}
            await store.sync_state.put({BUDGET_STATE_KEY: state}, self._clock())

    async def spend(self, purpose: str) -> None:
        """Take one call, or raise BudgetSpent (with the seconds until the budget renews)."""
        self._roll()
        limit = self._daily if purpose == POLLER else self._daily - self._reserve
        if self._shared:
            if self._store is None:
                raise RuntimeError("a shared budget spends only once keep() has loaded it")
            taken, used = await self._store.sync_state.take_one(
                BUDGET_STATE_KEY, self._day.isoformat(), limit, self._clock()
            )
            self._used = used
            self._changed(save=False)
        else:
            taken = self._used < limit
            if taken:
                self._used += 1
                self._changed()
        if not taken:
            self._spent(purpose)

    def _spent(self, purpose: str) -> None:
        now = self._clock().astimezone(UTC)
        midnight = datetime.combine(now.date() + timedelta(days=1), time(), UTC)
        raise BudgetSpent(
            f"the daily upstream budget is spent ({self._used} of {self._daily} calls"
            f"{'' if purpose == POLLER else f', {self._reserve} kept for the poller'})",
            retry_after=(midnight - now).total_seconds(),
        )

    def _roll(self) -> None:
        today = self._clock().astimezone(UTC).date()
        if today != self._day:
            self._day, self._used = today, 0
            self._changed()

    def _changed(self, *, save: bool = True) -> None:
        if save:
            self._dirty.set()
        if self._on_change is not None:
            self._on_change(self._daily - self._used)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after ``failures`` failed calls in a row; while open, calls fail at once; after
    ``cooldown`` seconds one trial call goes through, and its outcome closes or reopens it.
    ``on_change(serving)`` hears every switch between closed and not closed."""

    def __init__(
        self,
        *,
        failures: int,
        cooldown: float,
        clock: Callable[[], float],
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        self.state = BreakerState.CLOSED

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        self._admit()
        try:
            result = await fn()
        except BudgetSpent:
            self._trial_running = False  # our own limit, not an upstream failure
            raise
        except UpstreamRejected:
            self._record(success=True)  # the upstream answered; the request was refused
            raise
        except (UpstreamUnavailable, UpstreamError):
            self._record(success=False)
            raise
        except BaseException:
            self._trial_running = False
            raise
        self._record(success=True)
        return result

    def _admit(self) -> None:
        if self.state is BreakerState.CLOSED:
            return
        waited = self._clock() - self._opened_at
        if waited < self._cooldown:
            raise UpstreamUnavailable(
                "the upstream is failing; marveld pauses calls to it (circuit open)",
                retry_after=self._cooldown - waited,
            )
        if self._trial_running:
            raise UpstreamUnavailable(
                "the upstream is failing; a trial call is under way (circuit half-open)",
                retry_after=1.0,
            )
        self.state = BreakerState.HALF_OPEN
        self._trial_running = True

    def _record(self, *, success: bool) -> None:
        self._trial_running = False
        if success:
            self._failures = 0
            if self.state is not BreakerState.CLOSED:
                log.info("upstream answers again: circuit closed")
                self._switch(BreakerState.CLOSED)
            return
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            if self.state is BreakerState.CLOSED:
                log.warning("%d upstream calls failed in a row: circuit open", self._failures)
            self._opened_at = self._clock()
            self._switch(BreakerState.OPEN)

    def _switch(self, state: BreakerState) -> None:
        was_serving = self.state is BreakerState.CLOSED
        self.state = state
        serving = state is BreakerState.CLOSED
        if serving != was_serving and self._on_change is not None:
            self._on_change(serving)
