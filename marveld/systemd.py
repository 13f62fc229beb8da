"""Tell systemd how the daemon is doing: ``READY=1``, ``STOPPING=1``, ``WATCHDOG=1``.

A unit with ``Type=notify`` waits for ``READY=1`` before it counts the service as started
(and before units ordered after it start); ``WatchdogSec=`` restarts the service when
``WATCHDOG=1`` stops arriving. The protocol is one datagram of ``KEY=value`` lines to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for Linux's abstract
namespace), which is why this module needs nothing but the standard library: the
third-party wrappers (python-systemd, sdnotify, cysystemd) add a C build or a dependency
for these few lines. Outside systemd ``$NOTIFY_SOCKET`` is unset and every call is a no-op.

See sd_notify(3) and sd_watchdog_enabled(3).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import trio

log = logging.getLogger(__name__)

# A notification is one small datagram; never let a full socket queue stall the event loop.
SEND_TIMEOUT_SECONDS = 1.0


class Notifier:
    """Sends state changes to systemd; does nothing when not started by it."""

    def __init__(self, address: str | None, *, watchdog_seconds: float | None = None) -> None:
        self._address = address
        self.watchdog_seconds = watchdog_seconds
        """systemd's ``WatchdogSec``, or None when the watchdog is off for this process."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        """From ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``, set by systemd."""
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            # systemd 254+ may pass vsock:CID:PORT, for a service in a virtual machine.
            log.warning("NOTIFY_SOCKET %r is not an AF_UNIX socket: not notifying", address)
            address = None
        return cls(address, watchdog_seconds=_watchdog_seconds(env))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True when systemd got them."""
        if self._address is None:
            return False
        target = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT_SECONDS)
                sock.connect(target)
                sock.send("\n".join(assignments).encode())
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self._address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """Every listener is bound: units waiting for marveld may start."""
        return self.notify("READY=1", f"STATUS={status}")

    def stopping(self, status: str = "shutting down") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    async def keep_watchdog(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Send ``WATCHDOG=1`` every half ``WatchdogSec`` until cancelled; returns at once
        when the watchdog is off.

        The pings come from a task of the trio loop that runs everything else (the gRPC
        face's asyncio loop included, through trio-asyncio), so a loop that hangs or is
        blocked by synchronous work stops them, and systemd restarts the service.
        """
        task_status.started()
        if self.watchdog_seconds is None or not self.enabled:
            return
        interval = self.watchdog_seconds / 2
        log.info("feeding the systemd watchdog every %.3g s", interval)
        while True:
            self.notify("WATCHDOG=1")
            await trio.sleep(interval)


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """``$WATCHDOG_USEC`` in seconds when it is meant for this process (sd_watchdog_enabled)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # set for another process (we were started by one that is watched)
    return int(usec) / 1_000_000
