"""The listening sockets of the gRPC and HTTP ports, bound before their servers start so
that a taken or unknown address is one clear error naming its setting, the cap on the
connections a port holds open (:class:`ConnectionCap`), and a port's part in a graceful
stop (:class:`Drain`)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import trio

from marveld.domain.errors import CannotListen

log = logging.getLogger(__name__)

BACKLOG = 4096


def listen_tcp(host: str, port: int, setting: str) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (port 0 picks a free one).

    CannotListen, naming ``setting``, when the address is taken, not allowed or unknown.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this. grpclib sets it per connection only when the
        # socket's proto is IPPROTO_TCP; without it Nagle's algorithm and delayed ACKs added
        # ~40 ms to every call (bench/latency.py: health check 44 ms → 0.6 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise CannotListen(setting, host, port, exc) from exc
    sock.setblocking(False)
    return sock


WARNING_INTERVAL_SECONDS = 60.0


class ConnectionCap:
    """The open connections of one port, at most ``limit`` at once.

    Past the limit a new connection is refused (the caller closes it at once: with the
    process's descriptors at stake, nothing is read from or written to it), and the
    operator gets one WARNING naming ``setting`` at most every
    :data:`WARNING_INTERVAL_SECONDS`, with how many were refused since the last one: a
    flood of connections must not become a flood of log lines. ``on_release`` is told of
    each admitted connection that closes (:class:`marveld.malloc.HeapReturn` counts them).
    """

    def __init__(
        self,
        name: str,
        limit: int,
        setting: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_release: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.limit = limit
        self.setting = setting
        self.open = 0
        self._clock = clock
        self._on_release = on_release
        self._refused = 0
        self._warned_at: float | None = None

    def admit(self) -> bool:
        """True, counting it as open, when one more connection fits; else False."""
        if self.open < self.limit:
            self.open += 1
            return True
        self._refused += 1
        now = self._clock()
        if self._warned_at is None or now - self._warned_at >= WARNING_INTERVAL_SECONDS:
            log.warning(
                "%s: %d connections open, the most allowed (%s); refused %d new "
                "connection(s) since the last warning",
                self.name,
                self.open,
                self.setting,
                self._refused,
            )
            self._warned_at, self._refused = now, 0
        return False

    def release(self) -> None:
        """An admitted connection has closed."""
        self.open -= 1
        if self._on_release is not None:
            self._on_release()


DRAIN_POLL_SECONDS = 0.05


class Drain:
    """One port's part in a graceful stop, between the composition root and the server.

    The root calls :meth:`request`. The server then stops taking connections and calls
    (its listening socket closes; the calls a peer sends later are refused or find no
    listener) and sets :attr:`refusing`; it lets the calls under way end, closes each
    connection as it falls idle, and sets :attr:`finished` once none is left. How long
    that may take is the root's to bound (``shutdown.grace``).
    """

    def __init__(self) -> None:
        self.requested = trio.Event()
        self.refusing = trio.Event()
        self.finished = trio.Event()

    def request(self) -> None:
        self.requested.set()

    async def until_closed(self, open_connections: Callable[[], int]) -> None:
        """For the server: wait until no connection is open, then set finished."""
        while open_connections():  # noqa: ASYNC110 - a few polls, at shutdown only
            await trio.sleep(DRAIN_POLL_SECONDS)
        self.finished.set()
