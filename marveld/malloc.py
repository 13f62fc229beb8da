"""glibc's malloc: the daemon keeps to two arenas, unless ``MALLOC_ARENA_MAX`` says
otherwise, and gives back the heap a flood of connections used (:class:`HeapReturn`).

glibc gives a thread that allocates while another thread holds an arena one of its own, up
to eight per core, and each arena keeps what was freed in it. The daemon's worker threads
(SQLite, password hashing) came to hold ~21 MiB each: in the 60-minute soak the daemon's
RSS grew from 160 to 215 MiB in steps of one arena. With two arenas the same load held
~127 MiB (docs/reliability.md). The environment variable is read by glibc as the process
starts; ``mallopt(M_ARENA_MAX)`` is the same knob, so ``marveld serve`` needs no wrapper.

When thousands of connections close, their objects are freed (tracemalloc sees them go),
but malloc keeps the freed memory for reuse, so RSS stays at its high-water mark: +32 %
after the hostile suite's half-open flood, +15 % after its WebSocket churn.
``malloc_trim(0)`` hands the free pages back (docs/reliability.md has the figures).
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Mapping

import trio

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's <malloc.h>
ARENAS = 2


def limit_arenas(environ: Mapping[str, str], most: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``most``; call it before any thread starts. False when
    ``MALLOC_ARENA_MAX`` is set (the operator's choice stands) or the C library has no
    such knob (not glibc)."""
    if "MALLOC_ARENA_MAX" in environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_ARENA_MAX, most))
    if applied:
        log.debug("malloc arenas capped at %d", most)
    return applied


def trimmer() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (not glibc)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - glibc here
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return lambda: trim(0)


TRIM_INTERVAL_SECONDS = 1.0
TRIM_AFTER_CLOSES = 100


class HeapReturn:
    """Trims the heap (``trim``, :func:`trimmer` by default) once ``closes`` connections
    have closed since the last trim, checking every ``interval``. The ports'
    :class:`~marveld.listen.ConnectionCap` report each close to :meth:`closed`. A quiet
    daemon never trims; one under steady churn trims every ``interval`` at most (a trim
    of the daemon's heap after a flood takes a few milliseconds: the DEBUG line says)."""

    def __init__(
        self,
        *,
        interval: float = TRIM_INTERVAL_SECONDS,
        closes: int = TRIM_AFTER_CLOSES,
        trim: Callable[[], object] | None = None,
    ) -> None:
        self.interval = interval
        self.closes = closes
        self._trim = trim if trim is not None else trimmer()
        self._closed = 0
        self.trims = 0

    def closed(self) -> None:
        """A connection has closed."""
        self._closed += 1

    def trim_if_due(self) -> bool:
        """Trim if ``closes`` connections closed since the last trim; True if it did."""
        if self._closed < self.closes or self._trim is None:
            return False
        closed, self._closed = self._closed, 0
        started = time.perf_counter()
        self._trim()
        self.trims += 1
        log.info(
            "heap trimmed after %d closed connections in %.1f ms",
            closed,
            1000 * (time.perf_counter() - started),
        )
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check every ``interval`` until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            self.trim_if_due()
