"""Readiness: named checks of what marveld needs to serve, run together for ``/readyz``.

The composition root builds one :class:`Readiness` and adds a line per condition::

    readiness.add("database", store.ping)
    readiness.add("breaker", lambda: breaker.state is BreakerState.CLOSED)

A check is a plain or async function. It fails when it returns False, raises, or takes
longer than :data:`CHECK_SECONDS`; anything else (True, None) passes, so a ping that
raises on trouble is a check as it is.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0

Check = Callable[[], object | Awaitable[object]]


class Readiness:
    def __init__(self, *, seconds: float = CHECK_SECONDS) -> None:
        self._checks: dict[str, Check] = {}
        self._seconds = seconds

    def add(self, name: str, check: Check) -> None:
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} is already registered")
        self._checks[name] = check

    def flag(self, name: str) -> Callable[[bool], None]:
        """A check that passes until the returned setter is called with False, and again
        once it is called with True."""
        state = [True]

        def setter(value: bool) -> None:
            state[0] = value

        self.add(name, lambda: state[0])
        return setter

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._checks)

    async def check(self) -> dict[str, bool]:
        """Every check, run concurrently: name → passed, in the order they were added."""
        results = dict.fromkeys(self._checks, False)

        async def run(name: str, check: Check) -> None:
            with trio.move_on_after(self._seconds) as scope:
                try:
                    value = check()
                    if inspect.isawaitable(value):
                        value = await value
                except Exception as exc:
                    log.warning("readiness check %s failed: %r", name, exc)
                    return
                results[name] = value is not False
            if scope.cancelled_caught:
                log.warning("readiness check %s took over %.3g s", name, self._seconds)

        async with trio.open_nursery() as nursery:
            for name, check in self._checks.items():
                nursery.start_soon(run, name, check)
        return results


WATCH_SECONDS = 2.0


async def watch_database(
    ping: Callable[[], Awaitable[object]],
    on_change: Callable[[bool], None],
    *,
    interval: float = WATCH_SECONDS,
    patience: float = CHECK_SECONDS,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ping the database every ``interval`` until cancelled; ``on_change(False)`` (and one
    WARNING) when a ping fails or takes over ``patience``, ``on_change(True)`` (and one
    INFO) when it answers again: the gRPC health service follows, as ``/readyz`` does."""
    reachable = True
    task_status.started()
    while True:
        await trio.sleep(interval)
        error: object = None
        with trio.move_on_after(patience) as scope:
            try:
                await ping()
            except Exception as exc:
                error = exc
        if scope.cancelled_caught:
            error = f"no answer within {patience:g} s"
        if (error is None) != reachable:
            reachable = error is None
            on_change(reachable)
            if reachable:
                log.info("the database answers again: serving")
            else:
                log.warning("the database is unreachable (%s): not serving", error)
