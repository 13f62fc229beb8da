"""glibc's malloc arenas: the daemon keeps to two, unless ``MALLOC_ARENA_MAX`` says otherwise.

glibc gives a thread that allocates while another thread holds an arena one of its own, up
to eight per core, and each arena keeps what was freed in it. The daemon's worker threads
(SQLite, password hashing) came to hold ~21 MiB each: in the 60-minute soak the daemon's
RSS grew from 160 to 215 MiB in steps of one arena. With two arenas the same load held
~127 MiB (docs/reliability.md). The environment variable is read by glibc as the process
starts; ``mallopt(M_ARENA_MAX)`` is the same knob, so ``marveld serve`` needs no wrapper.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping

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
