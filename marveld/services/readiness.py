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
        self._running: set[str] = set()  # checks started and not yet returned
        self._nursery: trio.Nursery | None = None

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

    @property
    def running(self) -> frozenset[str]:
        """The checks started and not yet returned."""
        return frozenset(self._running)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the checks' tasks until cancelled: a check may outlive the answer it was
        asked for (one waiting in a worker thread cannot be cancelled), and it finishes
        here, not inside a probe's request."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def check(self) -> dict[str, bool]:
        """Every check, run concurrently: name → passed, in the order they were added.

        Answers within ``seconds`` whatever the checks do: one still running then fails,
        and is not started again until it has returned, so probes sent faster than a slow
        check answers never pile up behind it."""
        if self._nursery is None:
            raise RuntimeError("Readiness.check before Readiness.run")
        results = dict.fromkeys(self._checks, False)
        started: dict[str, trio.Event] = {}

        async def run(name: str, check: Check, answered: trio.Event) -> None:
            try:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                results[name] = value is not False
            except Exception as exc:
                log.warning("readiness check %s failed: %r", name, exc)
            finally:
                self._running.discard(name)
                answered.set()

        for name, check in self._checks.items():
            if name in self._running:
                continue  # the last one has not answered yet: fails again
            self._running.add(name)
            started[name] = trio.Event()
            self._nursery.start_soon(run, name, check, started[name])
        with trio.move_on_after(self._seconds):
            for answered in started.values():
                await answered.wait()
        for name, answered in started.items():
            if not answered.is_set():  # once per slow call, not once per probe
                log.warning("readiness check %s took over %.3g s", name, self._seconds)
        return dict(results)


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
    INFO) when it answers again: ``/readyz`` and the gRPC health service follow it.

    A ping runs in a worker thread that cannot be abandoned (it may wait for the pool's
    timeout), so a slow one is reported at ``patience``, not when it returns; the next
    ping starts ``interval`` after it has returned."""
    reachable = True

    def report(error: object) -> None:
        nonlocal reachable
        if (error is None) != reachable:
            reachable = error is None
            on_change(reachable)
            if reachable:
                log.info("the database answers again: serving")
            else:
                log.warning("the database is unreachable (%s): not serving", error)

    async def one(answered: trio.Event, errors: list[object]) -> None:
        try:
            await ping()
        except Exception as exc:
            errors.append(exc)
        answered.set()

    task_status.started()
    while True:
        await trio.sleep(interval)
        answered, errors = trio.Event(), list[object]()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, answered, errors)
            with trio.move_on_after(patience):
                await answered.wait()
            if not answered.is_set():
                report(f"no answer within {patience:g} s")
            else:
                report(errors[0] if errors else None)
