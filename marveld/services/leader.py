"""The leader: the one replica that runs, for the whole cluster, what must run once (the
poller, the cache and notification sweeps, the webhook worker).

Leadership comes from the store (a PostgreSQL session advisory lock; on SQLite the one
process always leads). A replica that is not the leader waits for the lock; one that
loses it (its database connection failed) stops its duties at once and waits again.
Every duty is a task started with ``nursery.start``: started when leadership begins,
cancelled when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from marveld.storage.coordination import Coordination

log = logging.getLogger(__name__)

Duty = Callable[..., Awaitable[None]]  # async def duty(*, task_status) -> None


class Leadership:
    def __init__(
        self,
        coordination: Coordination,
        duties: Sequence[tuple[str, Duty]],
        *,
        on_change: Callable[[bool], None] = lambda leading: None,
    ) -> None:
        self._coordination = coordination
        self._duties = tuple(duties)
        self._on_change = on_change
        self.leading = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Lead whenever this replica can, until cancelled. With replicas, ready at once
        (requests do not wait for leadership); on SQLite once the duties have started."""
        names = ", ".join(name for name, _ in self._duties) or "nothing"
        ready = task_status
        if self._coordination.shared:
            ready.started()
            ready = trio.TASK_STATUS_IGNORED
        while True:
            async with self._coordination.leadership() as lease:
                if self._coordination.shared:
                    log.info("this replica is the leader: it runs %s", names)
                self._set(True)
                try:
                    async with trio.open_nursery() as nursery:
                        for _, duty in self._duties:
                            await nursery.start(duty)
                        ready.started()
                        ready = trio.TASK_STATUS_IGNORED
                        await lease.lost()
                        nursery.cancel_scope.cancel()
                finally:
                    self._set(False)
            log.warning("leadership lost: %s stopped until this replica leads again", names)

    def _set(self, leading: bool) -> None:
        self.leading = leading
        self._on_change(leading)
