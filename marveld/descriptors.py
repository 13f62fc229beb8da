"""The process's file descriptor limit: raised to what the connection caps need.

systemd (and most shells) start a service with a soft RLIMIT_NOFILE of 1,024, below what
``grpc.max_connections`` plus ``http.max_connections`` (1,000 each by default) allow. Past
the soft limit ``accept()`` fails and every real client is locked out, so the caps would
never be the bound. ``marveld serve`` raises the soft limit towards the hard one (which
systemd sets at 524,288), as Go's runtime does for every program, and warns when even the
hard limit is too low.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

RESERVE = 256
"""Descriptors beside the connections: the database and its WAL, readers, the upstream
client's pool, the asyncio and trio wake-up pipes."""


def ensure_descriptors(connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE to ``connections + RESERVE`` if the hard limit allows
    (to the hard limit otherwise, with a WARNING); the soft limit now in force."""
    wanted = connections + RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:  # pragma: no cover - a hard limit that lied
        log.warning("cannot raise the open file limit from %d: %s", soft, exc)
        return soft
    if target < wanted:
        log.warning(
            "open file limit %d (the hard limit) is below the %d the connection caps need "
            "(grpc.max_connections + http.max_connections + %d): raise LimitNOFILE",
            target,
            wanted,
            RESERVE,
        )
    else:
        log.info("open file limit raised from %d to %d", soft, target)
    return target
