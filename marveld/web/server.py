"""Serve an ASGI app with hypercorn's HTTP/1.1 protocol on trio; readiness reports the real
bound port.

This is the one place that knows hypercorn. Its trio worker (``hypercorn.trio.serve``)
accepts every connection and closes a silent or half-sent one only after its keep-alive
timeout, and it has no connection cap and no hook to add one. So the accept loop is ours
(``trio.serve_listeners``, which also rides out EMFILE) and each connection is a
:class:`_Connection`, a small version of hypercorn's ``TCPServer`` that:

- counts against ``max_connections`` (:class:`marveld.listen.ConnectionCap`): a connection
  past it is closed at once, unread, and the operator gets one WARNING a minute;
- gives a new connection ``handshake_timeout`` to send its first request's headers, and an
  idle keep-alive one ``idle_timeout`` for its next; then closes it;
- bounds each write by ``idle_timeout``: a peer that reads nothing cannot pin a connection;
- pings an open WebSocket every ``websocket_ping_interval`` and closes it when its peer
  has sent nothing for two intervals (hypercorn's pinger drops the pongs);
- speaks HTTP/1.1 only (:class:`_Http11`). hypercorn would switch to HTTP/2 for the
  prior-knowledge preface or an ``Upgrade: h2c`` request, and its HTTP/2 has no budget
  for reset streams (CVE-2023-44487 "rapid reset": every HEADERS frame spawns an app task,
  however fast the peer cancels it). Nothing of ours speaks HTTP/2 to this port (gRPC has
  its own), so the preface closes the connection and ``Upgrade: h2c`` is ignored: the
  request is answered over HTTP/1.1, as RFC 9113 (which deprecates h2c upgrades) allows.

A graceful stop goes through a :class:`marveld.listen.Drain`: the listening socket closes;
a connection that has not sent a whole request yet, or waits idle for its next, is closed
at once; one serving a request answers it with ``Connection: close`` and closes after it.
WebSockets are the app's to end (with their resume cursor).

The ASGI lifespan protocol is not run: neither of our apps has start-up or shutdown hooks
(the composition root starts and stops everything).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h11 import H2ProtocolAssumedError, H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr

from marveld.listen import ConnectionCap, Drain, listen_tcp
from marveld.web.limits import MAX_HEADER_BYTES, RequestLimits

log = logging.getLogger(__name__)

MAX_RECV = 1 << 16
# What a closed connection still reads and drops before it is closed (see _Connection._read).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
MAX_WEBSOCKET_MESSAGE_BYTES = 1 << 20
_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line after a request's headers (h11's)
PING_FRAME = b"\x89\x00"  # a server's ping: FIN, opcode 9, unmasked, no payload


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The ``http.*`` connection settings (marveld/config.py documents each).

    ``idle_timeout`` is longer than clients keep idle connections in their pools (httpx
    5 s, aiohttp 15 s): were they equal, a client reusing a connection idle ~5 s raced the
    server's close and lost a POST to a ReadError (seen in CI, 1 in 30 at 4.994 s idle).
    """

    max_connections: int = 1000
    handshake_timeout: float = 10.0
    idle_timeout: float = 20.0


async def serve_asgi(
    app: Any,
    host: str,
    port: int,
    *,
    name: str = "http",
    limits: ConnectionLimits = ConnectionLimits(),
    request_limits: bool = True,
    websocket_ping_interval: float | None = None,
    setting: str = "http.listen",
    on_close: Callable[[], None] | None = None,
    drain: Drain | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` (port 0 picks a free one) until cancelled, or with
    ``drain``, until it is requested and every connection has closed (the module says how).

    ``task_status.started`` gets the bound port once the socket listens. Request headers,
    bodies (:class:`RequestLimits`, unless ``request_limits`` is false because ``app``
    applies them itself, inside its access log) and WebSocket messages have size limits.
    ``on_close`` is called as each admitted connection closes.
    """
    config = _config(name)
    # starlette's ASGI types, not hypercorn's: both fit
    asgi: Any = RequestLimits(app) if request_limits else app
    served = ASGIWrapper(asgi)
    context = WorkerContext(None)
    cap = ConnectionCap(
        name, limits.max_connections, f"{name}.max_connections", on_release=on_close
    )
    # Bound here, not by hypercorn: a taken port is then CannotListen naming ``setting``.
    sock = listen_tcp(host, port, setting)
    try:
        bound: int = sock.getsockname()[1]
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    except BaseException:
        sock.close()
        raise

    live: set[_Connection] = set()
    draining = False

    async def handle(stream: trio.SocketStream) -> None:
        if not cap.admit():
            await trio.aclose_forcefully(stream)
            return
        connection = _Connection(served, config, context, limits, websocket_ping_interval, stream)
        live.add(connection)
        try:
            if draining:  # accepted just before the listener closed
                connection.drain()
            await connection.run()
        finally:
            live.discard(connection)
            cap.release()

    async with trio.open_nursery() as nursery:
        accepting = trio.CancelScope()

        async def accept() -> None:
            with accepting:
                await trio.serve_listeners(handle, [listener], handler_nursery=nursery)

        nursery.start_soon(accept)
        log.info("%s listening on %s:%d", name, host, bound)
        task_status.started(bound)
        if drain is not None:
            await drain.requested.wait()
            accepting.cancel()
            await listener.aclose()
            draining = True
            drain.refusing.set()
            for connection in tuple(live):
                connection.drain()
            await drain.until_closed(lambda: cap.open)


def _config(name: str) -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger(f"marveld.{name}")
    # Room for the request line and framing around the headers RequestLimits counts.
    config.h11_max_incomplete_size = 2 * MAX_HEADER_BYTES
    config.websocket_max_message_size = MAX_WEBSOCKET_MESSAGE_BYTES
    config.websocket_ping_interval = None  # _Connection pings (see there)
    return config


class _Http11(H11Protocol):
    """hypercorn's HTTP/1.1 protocol without its switches to HTTP/2 (see the module), and
    deaf to bytes pipelined past a request the connection closes after."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.connection = _ClosingH11(
            h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size
        )

    async def handle(self, event: Event) -> None:
        if isinstance(event, RawData) and self.connection.their_state is h11.MUST_CLOSE:
            return  # never read: the connection closes once the answer is out
        await super().handle(event)

    async def _check_protocol(self, event: h11.Request) -> None:
        if event.method == b"PRI" and event.target == b"*" and event.http_version == b"2.0":
            raise H2ProtocolAssumedError(b"")  # the connection closes


class _ClosingH11(h11.Connection):
    """h11 calls bytes after a request whose answer said ``Connection: close`` a protocol
    error, and hypercorn then closes the connection at once, cutting off the answer still
    being sent (a 413 lost its body when the client had pipelined a next request). Here
    they are left unread, and the answer goes out whole before the connection closes."""

    def next_event(self) -> Any:
        if self.their_state is h11.MUST_CLOSE:
            return h11.NEED_DATA
        return super().next_event()

    def close_after_this(self) -> None:
        """The answer being (or next) sent says ``Connection: close``, and the connection
        closes after it (h11 has no public way to say so; this is what a request's own
        ``Connection: close`` does)."""
        self._cstate.process_keep_alive_disabled()


class _Connection:
    """One accepted connection: hypercorn's HTTP/1.1 protocol between the socket and the
    app, with the handshake and idle timeouts of :class:`ConnectionLimits` and, on a
    WebSocket, pings.

    hypercorn tells its I/O side when a request's headers have arrived
    (``Updated(idle=False)``) and when the connection waits for the next
    (``Updated(idle=True)``); the timer follows: the handshake timeout until the first
    request, none while one is served, the idle timeout between.

    An open WebSocket is pinged every ``ping_interval`` (hypercorn's own pinger is off: it
    is a task a connection, and it drops the pongs, so a dead peer was never noticed). A
    live peer answers each ping; one that has sent nothing for two intervals when the next
    ping is due is closed, and its subscriber ends.

    The timers are the deadline of the one wait for the peer's bytes, so a connection costs
    one task besides the app's (a WebSocket subscriber's memory is mostly tasks).
    """

    def __init__(
        self,
        app: ASGIWrapper,
        config: Config,
        context: WorkerContext,
        limits: ConnectionLimits,
        ping_interval: float | None,
        stream: trio.SocketStream,
    ) -> None:
        self._app = app
        self._config = config
        self._context = context
        self._limits = limits
        self._ping_interval = ping_interval
        self._stream = stream
        self._send_lock = trio.Lock()
        now = trio.current_time()
        self._timeout_at = now + limits.handshake_timeout  # inf while a request is served
        self._ping_at = math.inf  # set once a WebSocket is open
        self._heard_at = now  # the peer's last bytes
        self._wait = trio.CancelScope()  # around the wait for the peer's bytes
        self._reader = trio.CancelScope()
        self._handshake = trio.CancelScope()  # around the wait for the first request
        self._protocol: _Http11
        self._lingering = False
        self._draining = False

    def drain(self) -> None:
        """The server stops: close now unless a request is being served; then close after
        its answer (``Connection: close``)."""
        self._draining = True
        now = trio.current_time()
        self._handshake.deadline = now
        if self._timeout_at != math.inf:  # waiting for a request
            self._timeout_at = now
            self._wait.deadline = now
        elif hasattr(self, "_protocol") and isinstance(self._protocol.connection, _ClosingH11):
            with contextlib.suppress(h11.LocalProtocolError):
                self._protocol.connection.close_after_this()  # not a WebSocket: the app's

    async def run(self) -> None:
        try:
            first = await self._first_request_head()
            if not first:
                return  # nothing in time, or closed: no protocol was built for it
            family = self._stream.socket.family
            client = parse_socket_addr(family, self._stream.socket.getpeername())
            server = parse_socket_addr(family, self._stream.socket.getsockname())
            async with TaskGroup() as task_group:
                self._protocol = _Http11(
                    self._app,
                    self._config,
                    self._context,
                    task_group,
                    ConnectionState({}),
                    False,
                    client,
                    server,
                    self._protocol_send,
                )
                await self._protocol.initiate()
                await self._read(first)
        except OSError:  # the peer went away (getpeername on a reset socket, say)
            pass
        finally:
            await self._send_eof()
            await self._stream.aclose()

    async def _first_request_head(self) -> bytes:
        """The peer's bytes up to the end of its first request's headers (or past what h11
        would hold, which it then refuses; or up to the peer's EOF), read before anything
        of HTTP is built; empty when the handshake timeout ran out first. A flood of
        connections that never send a whole request costs a socket and this task each,
        not hypercorn's and h11's state: built for each, it left the heap fragmented after
        they closed (docs/reliability.md)."""
        buffered = bytearray()
        self._handshake.deadline = self._timeout_at
        with self._handshake:
            while len(buffered) <= self._config.h11_max_incomplete_size:
                try:
                    data = await self._stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                if not data:
                    break
                buffered += data
                if _HEAD_END.search(buffered):
                    break
            self._heard_at = trio.current_time()
        if self._handshake.cancelled_caught:
            return b""
        return bytes(buffered)

    async def _read(self, first: bytes) -> None:
        """Feed the peer's bytes to the protocol, ``first`` (:meth:`_first_request_head`)
        and then what follows, until the connection ends: the peer closes it, a timer runs
        out, a WebSocket peer leaves pings unanswered. Once our side is
        closed, read and drop the peer's bytes for a moment (:data:`LINGER_SECONDS`,
        :data:`LINGER_BYTES`) before closing: closing a socket with unread bytes sends a
        reset, and a reset can reach the peer before it has read our answer, a 413 for
        instance, which it then never sees."""
        lingered = 0
        pending = first
        with self._reader:
            while lingered <= LINGER_BYTES:
                if pending:
                    data, pending = pending, b""
                else:
                    with trio.CancelScope(deadline=self._deadline()) as self._wait:
                        try:
                            data = await self._stream.receive_some(MAX_RECV)
                        except (trio.ClosedResourceError, trio.BrokenResourceError):
                            break
                    if self._wait.cancelled_caught:
                        if trio.current_time() >= self._timeout_at or not await self._ping():
                            break
                        continue
                    if not data:
                        break
                    self._heard_at = trio.current_time()
                if self._lingering:
                    lingered += len(data)
                    continue
                try:
                    await self._protocol.handle(RawData(bytes(data)))
                except H2ProtocolAssumedError:
                    break
        await self._protocol.handle(Closed())
        # Nothing more can reach the peer: close now, not once the app has unwound.
        await self._stream.aclose()

    def _deadline(self) -> float:
        """When the wait for the peer's bytes ends: a timeout, or the next ping due (the
        first an interval after the WebSocket opened)."""
        if self._ping_at == math.inf and self._ping_interval is not None and self._websocket():
            self._ping_at = trio.current_time() + self._ping_interval
        return min(self._timeout_at, self._ping_at)

    def _websocket(self) -> bool:
        """True while the connection is an open WebSocket (accepted, not closing)."""
        stream = self._protocol.stream
        return (
            isinstance(stream, WSStream)
            and stream.state is ASGIWebsocketState.CONNECTED
            and not stream.closed
        )

    async def _ping(self) -> bool:
        """A ping is due: send it, unless the peer has sent nothing for two intervals
        (then False: the connection is closed, with an INFO line)."""
        if not self._websocket() or self._ping_interval is None:
            self._ping_at = math.inf
            return True
        now = trio.current_time()
        if now - self._heard_at > 2 * self._ping_interval:
            log.info(
                "closing a WebSocket whose peer sent nothing for %.1f s (pings unanswered)",
                now - self._heard_at,
            )
            return False
        self._ping_at = now + self._ping_interval
        async with self._send_lock:  # checked under the lock: never after a close frame
            return not self._websocket() or await self._write(PING_FRAME)

    async def _protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            async with self._send_lock:
                sent = await self._write(event.data)
            if not sent:
                self._reader.cancel()
                await trio.aclose_forcefully(self._stream)
                await self._protocol.handle(Closed())
            self._wait.deadline = self._deadline()  # a 101 just sent starts the pings
        elif isinstance(event, Closed):  # the protocol is done with the connection
            await self._send_eof()
            self._lingering = True
            self._reader.deadline = min(self._reader.deadline, trio.current_time() + LINGER_SECONDS)
            await self._protocol.handle(Closed())
        elif isinstance(event, Updated):
            idle = 0.0 if self._draining else self._limits.idle_timeout
            self._timeout_at = trio.current_time() + idle if event.idle else math.inf
            self._wait.deadline = self._deadline()

    async def _write(self, data: bytes) -> bool:
        """Shielded, as hypercorn does (a write cut short would corrupt the stream), and
        bounded: a peer that reads nothing for idle_timeout is dropped. False when the
        bytes could not be sent."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self._limits.idle_timeout
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        return not scope.cancelled_caught

    async def _send_eof(self) -> None:
        # After the write under way, if any: an answer goes out whole before the EOF.
        async with self._send_lock:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self._stream.send_eof()  # unless the peer is gone already
