"""The poller: a task in the daemon's nursery that syncs in the background.

On start it runs the first full sync if it has not completed (resuming a killed one);
after that it polls every ``poller.interval``, counted from the last sync that ended
well (a restart does not reset the count, and a TriggerSync counts). A failed sync is
retried with exponential backoff and full jitter, from where it stopped. Requests never
wait for it: it runs in its own task, and its writes are short transactions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Final

import trio

from marveld.domain.errors import UpstreamError
from marveld.services.sync import SyncService
from marveld.storage import StorageError
from marveld.upstream import RetryPolicy

log = logging.getLogger(__name__)

RETRY_INITIAL: Final = 5.0
RETRY_MAX: Final = 15 * 60.0


class Poller:
    def __init__(
        self,
        sync: SyncService,
        clock: Callable[[], datetime],
        *,
        interval: float,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self._sync = sync
        self._clock = clock
        self._interval = interval
        self._backoff = RetryPolicy(backoff_initial=retry_initial, backoff_max=retry_max)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sync until cancelled. Ready at once: the first sync runs in the background."""
        task_status.started()
        failures = 0
        while True:
            await trio.sleep(await self._until_due())
            try:
                await self._sync.run_once()
            except (UpstreamError, StorageError) as exc:
                failures += 1
                delay = self._backoff.backoff(failures)
                log.warning("sync failed (%s); attempt %d in %.1fs", exc, failures + 1, delay)
                await trio.sleep(delay)
                continue
            failures = 0

    async def _until_due(self) -> float:
        """Seconds until the next sync is due: none before the first full sync completes,
        else the rest of the interval since the last sync that ended well."""
        if not await self._sync.first_sync_done():
            return 0.0
        last = await self._sync.last_completed()
        if last is None:
            return 0.0
        elapsed = (self._clock() - last).total_seconds()
        return max(0.0, self._interval - elapsed)
