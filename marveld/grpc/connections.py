"""What grpclib leaves to the application about HTTP/2 connections: limits per connection
and per port, so one hostile peer cannot grow memory or hold file descriptors.

grpclib's server accepts every connection, holds it as long as the peer likes, advertises
no stream or header limits, and runs a handler task for every HEADERS frame even when the
peer resets the stream at once (CVE-2023-44487, "rapid reset": 20,000 such pairs on one
connection grew RSS by ~150 MiB). It offers no hooks for these, so :class:`GuardedServer`
gives it our own protocol object (:class:`_GuardedProtocol`, a subclass of grpclib's
``H2Protocol``) that:

- refuses a connection past ``max_connections`` at once, with one WARNING a minute;
- closes a connection that has not sent the preface and its SETTINGS within
  ``handshake_timeout``, and one with no call open for ``idle_timeout`` (GOAWAY NO_ERROR);
- advertises SETTINGS_MAX_CONCURRENT_STREAMS and SETTINGS_MAX_HEADER_LIST_SIZE and enforces
  them: a handler task still running counts as a stream even after its reset, a call past
  the limit is refused (RST_STREAM REFUSED_STREAM), and a call whose headers are over the
  limit is answered RESOURCE_EXHAUSTED (UNAUTHENTICATED when it is the token) while the
  connection stays usable;
- keeps a budget of ``max_resets`` streams reset by the peer or refused by us in
  :data:`RESET_WINDOW_SECONDS`; past it the connection gets GOAWAY ENHANCE_YOUR_CALM;
- drains for a graceful stop (:meth:`GuardedServer.drain`): the listening socket closes,
  each connection gets GOAWAY NO_ERROR naming the last call it will serve, calls under way
  finish, a call sent after the GOAWAY is refused (RST_STREAM REFUSED_STREAM: clients retry
  it elsewhere, it never ran), and each connection closes once its last call has ended;
- answers request metadata grpclib would fail on (a malformed ``grpc-timeout``, a ``-bin``
  value that is not base64, an unsupported ``grpc-encoding``, missing pseudo-headers) with
  a clear status before grpclib sees it, and turns any HTTP/2 protocol error into GOAWAY
  with its error code instead of an asyncio traceback.

The CONTINUATION flood (CVE-2024-27316) is bounded by h2 itself (64 frames a header block)
and by the decoded size cap set here (:data:`MAX_DECODED_HEADER_BYTES`). A grpclib
upgrade that changes ``H2Protocol`` fails tests/test_grpc_connections.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import logging
import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

import grpclib.server
from grpclib.const import Status
from grpclib.metadata import encode_grpc_message
from grpclib.protocol import Connection, EventsProcessor, H2Protocol, _set_nodelay
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import Event as H2Event
from h2.events import RemoteSettingsChanged, RequestReceived, StreamReset
from h2.exceptions import ProtocolError, StreamClosedError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from marveld import correlation
from marveld.domain.errors import Unauthenticated
from marveld.listen import ConnectionCap
from marveld.services.security import check_token_size

log = logging.getLogger(__name__)

RESET_WINDOW_SECONDS = 10.0
"""``max_resets`` is a budget per this many seconds (a token bucket that refills over it)."""
MAX_DECODED_HEADER_BYTES = 2 << 20
"""What one header block may decode to (HPACK can expand); past it the connection is
closed. Between ``max_header_list_size`` and this, the call is refused and the connection
lives on: a peer's 1 MB token gets UNAUTHENTICATED, not a dropped connection."""
STREAM_WINDOW_BYTES = 65_535  # HTTP/2's initial window: no change for the peer to race
CONNECTION_WINDOW_BYTES = 1 << 20
"""Request bytes a peer may have in flight unread, per stream and per connection. Requests
are a few hundred bytes; grpclib's 4 MiB default let 1,000 connections pin 4 GiB."""
MAX_WRITE_BUFFER_BYTES = 16 << 20
"""Bytes queued for a peer that does not read them (PING and SETTINGS acknowledgements are
written whatever the peer reads); past it the connection is closed."""

HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
"""A stream that never ends by itself: a drain ends it (its peer has seen NOT_SERVING)."""
DRAIN_REASON = b"the server is stopping: send new calls elsewhere"
DRAINED = "drained: the server is stopping"

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4, the client's first bytes
_TIMEOUT = re.compile(r"[0-9]{1,8}[HMSmun]")  # the gRPC spec: at most 8 digits and a unit
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The ``grpc.*`` connection settings (marveld/config.py documents each)."""

    max_connections: int = 1000
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    keepalive_time: float = 30.0
    keepalive_timeout: float = 20.0
    max_concurrent_streams: int = 1000
    max_header_list_size: int = 16384
    max_resets: int = 200


Refused = Callable[[str, Status], None]
"""Called with the :path and status of a call answered here, before grpclib saw it."""


class _ResetBudget:
    """A token bucket: ``size`` resets, refilled over :data:`RESET_WINDOW_SECONDS`."""

    def __init__(self, size: int) -> None:
        self._size = float(size)
        self._tokens = float(size)
        self._at = time.monotonic()

    def spend(self) -> bool:
        """False once the budget is spent."""
        now = time.monotonic()
        self._tokens = min(
            self._size, self._tokens + (now - self._at) * self._size / RESET_WINDOW_SECONDS
        )
        self._at = now
        self._tokens -= 1
        return self._tokens >= 0


class GuardedServer(grpclib.server.Server):
    """grpclib's server with :class:`ConnectionLimits` on every connection."""

    def __init__(
        self,
        handlers: Collection[Any],
        *,
        limits: ConnectionLimits,
        on_refused: Refused,
        on_close: Callable[[], None] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(handlers, **options)
        self._limits = limits
        self._on_refused = on_refused
        self._known = frozenset(self._mapping)
        self._tally = ConnectionCap(
            "grpc", limits.max_connections, "grpc.max_connections", on_release=on_close
        )
        self._protocols: set[_GuardedProtocol] = set()
        self._draining = False

    @property
    def open_connections(self) -> int:
        return self._tally.open

    def drain(self) -> None:
        """Stop taking connections, and have every connection finish its calls and close
        (the module says how). Call from the asyncio loop's thread."""
        self._draining = True
        if self._server is not None:
            self._server.close()  # the listening socket; connections stay
        for protocol in tuple(self._protocols):
            protocol.drain()

    def _protocol_factory(self) -> H2Protocol:
        self.__gc_step__()
        handler = _GuardedHandler(
            self._mapping, self._codec, self._status_details_codec, self.__dispatch__
        )
        self._handlers.add(handler)
        protocol = _GuardedProtocol(
            handler,
            self._config,
            self._h2_config,
            limits=self._limits,
            tally=self._tally,
            known=self._known,
            on_refused=self._on_refused,
            on_lost=self._protocols.discard,
            draining=self._draining,  # accepted just before the listener closed
        )
        self._protocols.add(protocol)
        return protocol


class _GuardedHandler(grpclib.server.Handler):
    """grpclib's per-connection handler, counting the tasks still running: a task a reset
    cancelled runs until it has unwound, and holds its memory until then."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.running = 0
        self.on_idle: Callable[[], None] = lambda: None
        self._watches: set[asyncio.Task[None]] = set()

    def accept(self, stream: Any, headers: Any, release_stream: Callable[[], Any]) -> None:
        super().accept(stream, headers, release_stream)
        self.running += 1
        task = self._tasks[stream]
        task.add_done_callback(self._done)
        if (":path", HEALTH_WATCH) in headers:
            self._watches.add(task)

    def end_watches(self) -> None:
        """Cancel the health watches: they would hold a draining connection open."""
        for task in self._watches:
            task.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running -= 1
        self._cancelled.discard(task)
        self._watches.discard(task)
        if not self.running:
            self.on_idle()

    def cancel(self, stream: Any) -> None:
        task = self._tasks.pop(stream, None)  # grpclib's pop() raised when it was gone
        if task is not None:
            task.cancel()
            self._cancelled.add(task)


class _GuardedProtocol(H2Protocol):
    def __init__(
        self,
        handler: _GuardedHandler,
        config: Any,
        h2_config: Any,
        *,
        limits: ConnectionLimits,
        tally: ConnectionCap,
        known: frozenset[str],
        on_refused: Refused,
        on_lost: Callable[[_GuardedProtocol], None],
        draining: bool,
    ) -> None:
        super().__init__(handler, config, h2_config)
        self._guarded = handler
        self._limits = limits
        self._tally = tally
        self._known = known
        self._on_refused = on_refused
        self._on_lost = on_lost
        self._draining = draining
        self._admitted = False
        self._closed = False
        self._started = False
        self._preface = b""
        self._budget = _ResetBudget(limits.max_resets)
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    # --- the connection's life --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admitted (or refused at the cap); nothing of HTTP/2 is built until the peer has
        sent the client preface (:meth:`_start`)."""
        if not self._tally.admit():
            self._closed = True
            cast(asyncio.Transport, transport).abort()
            return
        self._admitted = True
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _set_nodelay(sock)
        self._handshake_timer = asyncio.get_event_loop().call_later(
            self._limits.handshake_timeout, self._give_up, "no HTTP/2 preface and SETTINGS"
        )
        if self._draining:
            self.drain()

    def _start(self) -> None:
        """grpclib's ``H2Protocol.connection_made``, with our SETTINGS in place before the
        first frame: set later, h2 would apply them (and lower its decoder's bound to the
        advertised header size) only once the peer acknowledges them.

        Deferred until the client preface is in: h2's and grpclib's state is ~40 objects
        (a dozen deques of 600 bytes each, beyond pymalloc's reach), and built for each of
        a flood of connections that never speak, it left glibc's heap fragmented after they
        closed (RSS +90% after 5,000 such connections, docs/reliability.md)."""
        assert self._transport is not None
        h2 = H2Connection(config=self.h2_config)
        h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self._limits.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: self._limits.max_header_list_size,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW_BYTES,
            },
        )
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_WINDOW_BYTES - STREAM_WINDOW_BYTES)
        # Advertised is what a polite peer keeps to; the decoder's bound is what the others
        # are held to.
        h2.decoder.max_header_list_size = MAX_DECODED_HEADER_BYTES
        self.connection = Connection(h2, self._transport, config=self.config)
        self.connection.flush()
        self.connection.initialize()  # keepalive pings
        self.processor = EventsProcessor(self.handler, self.connection)
        self._guarded.on_idle = self._arm_idle
        self._started = True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        self._on_lost(self)
        if not self._admitted:
            return
        self._admitted = False
        self._tally.release()
        self._closed = True
        if not self._started:
            self._guarded.close()  # marks it closing: the server forgets it
            return
        super().connection_lost(exc)
        # No cycle through the handler: until the garbage collector's oldest generation
        # ran, it kept each closed connection's h2 state, a CONTINUATION flood's buffered
        # header block included (~1 MiB), alive (the hostile suite: +70 MiB).
        self._guarded.on_idle = _nothing
        self._h2.incoming_buffer = FrameBuffer(server=True)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._started:
            data = self._preface + data
            if len(data) < len(PREFACE) and PREFACE.startswith(data):
                self._preface = data  # at most 23 bytes
                return
            self._preface = b""
            self._start()  # h2 judges the bytes, a wrong preface included
        try:
            events = self.connection.feed(data)
        except ProtocolError as exc:
            self._goaway(_error_code(exc), f"HTTP/2 protocol error: {exc}")
            return
        except Exception as exc:  # h2 decoding headers as ASCII: UnicodeDecodeError, ...
            self._goaway(ErrorCodes.PROTOCOL_ERROR, f"undecodable frames: {type(exc).__name__}")
            return
        self.connection.flush()
        for event in events:
            if self._closed:
                return
            if self._screen(event):
                self.processor.process(event)
        if self._closed:
            return
        self.connection.flush()
        if self._transport is not None and (
            self._transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES
        ):
            self._give_up("the peer does not read what it is sent")

    # --- each event, before grpclib's processor ---------------------------------------------

    def _screen(self, event: H2Event) -> bool:
        """True when grpclib's processor should see ``event``."""
        if isinstance(event, RemoteSettingsChanged) and self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
            if not self._guarded.running:
                self._arm_idle()
        elif isinstance(event, StreamReset) and event.remote_reset:
            self._spend("stream resets")
        elif isinstance(event, RequestReceived):
            return self._admit_request(event)
        return True

    def _admit_request(self, event: RequestReceived) -> bool:
        stream_id = event.stream_id
        assert stream_id is not None
        if self._draining:  # sent before the peer read our GOAWAY: it never ran, retry it
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return False
        if self._guarded.running >= self._limits.max_concurrent_streams:
            # A reset stream's task still counts: rapid reset cannot pile up handlers.
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            self._spend("refused streams")
            return False
        headers = cast(list[tuple[str, str]], event.headers or [])
        problem = _check_headers(headers, self._limits.max_header_list_size, self._known)
        if problem is None:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            return True
        if isinstance(problem, ErrorCodes):  # not a request at all: no status to answer with
            self._reset(stream_id, problem)
            self._spend("malformed requests")
            return False
        http_status, status, message, extra = problem
        path = next((v for k, v in headers if k == ":path"), "")
        self._answer(event, http_status, status, message, extra, headers)
        self._on_refused(path if path in self._known else "", status)
        if not self._guarded.running:
            self._arm_idle()
        return False

    def _answer(
        self,
        event: RequestReceived,
        http_status: int,
        status: Status,
        message: str,
        extra: list[tuple[str, str]],
        headers: list[tuple[str, str]],
    ) -> None:
        """A trailers-only response; the stream is reset (NO_ERROR) if the peer is still
        sending, as RFC 9113 §8.1 allows after a complete response."""
        correlation_id = correlation.choose(
            v for k, v in headers if k in correlation.REQUEST_HEADERS and len(v) < 256
        )
        reply = [
            (":status", str(http_status)),
            ("content-type", "application/grpc"),
            ("grpc-status", str(status.value)),
            ("grpc-message", encode_grpc_message(message)),
            *extra,
        ]
        if correlation_id is not None:
            reply.append((correlation.RESPONSE_HEADER, correlation_id))
        stream_id = event.stream_id
        assert stream_id is not None
        try:
            self._h2.send_headers(stream_id, reply, end_stream=True)
        except StreamClosedError:
            pass  # the peer reset it already (in the same read)
        else:
            if event.stream_ended is None:
                self._reset(stream_id, ErrorCodes.NO_ERROR)
        path = next((v for k, v in headers if k == ":path"), "?")
        context = contextvars.copy_context()
        context.run(correlation.CORRELATION_ID.set, correlation_id)
        context.run(correlation.log_request, log, "grpc", _printable(path), status.name, 0.0)

    def _reset(self, stream_id: int, code: ErrorCodes) -> None:
        with contextlib.suppress(StreamClosedError):  # the peer reset it (in the same read)
            self._h2.reset_stream(stream_id, code)

    # --- limits ---------------------------------------------------------------------------

    def _spend(self, what: str) -> None:
        if not self._budget.spend():
            self._goaway(
                ErrorCodes.ENHANCE_YOUR_CALM,
                f"over grpc.max_resets ({self._limits.max_resets} {what} and refusals in "
                f"{RESET_WINDOW_SECONDS:g} s)",
                level=logging.WARNING,
            )

    def drain(self) -> None:
        """GOAWAY NO_ERROR, naming the last stream this connection serves; close once the
        calls under way have ended (at once when none is). A connection still in its
        handshake is closed."""
        if self._closed:
            return
        self._draining = True
        if not self._started:
            self._give_up("the server is stopping (before the HTTP/2 handshake)")
            return
        self._guarded.end_watches()
        if self._guarded.running:
            # Written past h2: its close_connection() would close its state machine, and
            # the calls under way could not send their answers.
            self.connection.flush()
            assert self._transport is not None
            goaway = GoAwayFrame(
                stream_id=0,
                last_stream_id=self._h2.highest_inbound_stream_id,
                error_code=ErrorCodes.NO_ERROR,
                additional_data=DRAIN_REASON,
            )
            self._transport.write(goaway.serialize())
        else:
            self._goaway(ErrorCodes.NO_ERROR, DRAINED, level=logging.DEBUG)

    def _arm_idle(self) -> None:
        if self._draining and not self._closed and not self._guarded.running:
            self._goaway(ErrorCodes.NO_ERROR, DRAINED, level=logging.DEBUG)
            return
        if self._closed or self._handshake_timer is not None or self._idle_timer is not None:
            return
        self._idle_timer = asyncio.get_event_loop().call_later(
            self._limits.idle_timeout, self._idle_expired
        )

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if not self._guarded.running:
            self._goaway(ErrorCodes.NO_ERROR, "idle", level=logging.DEBUG)

    def _goaway(self, code: ErrorCodes, why: str, *, level: int = logging.INFO) -> None:
        """GOAWAY with ``code``, then close: the peer learns why (h2's error codes)."""
        h2 = self._h2
        try:
            h2.close_connection(
                error_code=code,
                last_stream_id=h2.highest_inbound_stream_id,
                additional_data=why.encode()[:256],
            )
            self.connection.flush()
        except Exception:  # the h2 state machine may refuse after its own error
            log.debug("no GOAWAY sent", exc_info=True)
        self._give_up(why, level=level, code=code)

    def _give_up(self, why: str, *, level: int = logging.DEBUG, code: Any = None) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel_timers()
        peer = self._transport.get_extra_info("peername") if self._transport else None
        shown = f" (GOAWAY {code.name})" if isinstance(code, ErrorCodes) else ""
        log.log(level, "grpc: closed the connection from %s%s: %s", _address(peer), shown, why)
        if self._started:
            self.processor.close(why)
        else:
            self._guarded.close()
            if self._transport is not None:
                self._transport.close()

    def _cancel_timers(self) -> None:
        for timer in (self._handshake_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._handshake_timer = self._idle_timer = None

    @property
    def _h2(self) -> H2Connection:
        return self.connection._connection


def _nothing() -> None:
    pass


_Problem = tuple[int, Status, str, list[tuple[str, str]]] | ErrorCodes


def _check_headers(
    headers: list[tuple[str, str]], limit: int, known: frozenset[str]
) -> _Problem | None:
    """What is wrong with a request's headers that grpclib would not answer clearly (or at
    all: a missing ``:path`` raised KeyError in grpclib, logged as a server error)."""
    size = sum(len(name) + len(value) + 32 for name, value in headers)  # RFC 9113 §6.5.2
    found = {name: value for name, value in headers}
    if ":path" not in found or ":method" not in found:
        return ErrorCodes.PROTOCOL_ERROR
    if size > limit:
        token = found.get("authorization", "").removeprefix("Bearer ")
        try:
            check_token_size(token)  # the same refusal as a token under the header limit
        except Unauthenticated as exc:
            return (200, Status.UNAUTHENTICATED, str(exc), [])
        return (
            200,
            Status.RESOURCE_EXHAUSTED,
            f"the request headers are {size} bytes; at most {limit} are accepted "
            "(grpc.max_header_list_size)",
            [],
        )
    if found[":method"] != "POST":
        return None  # grpclib answers 405
    content_type = found.get("content-type", "")
    if not content_type.startswith("application/grpc"):
        return (415, Status.INVALID_ARGUMENT, "content-type must be application/grpc", [])
    if found.get("te") != "trailers":
        return (200, Status.INVALID_ARGUMENT, 'the "te: trailers" header is missing', [])
    if found[":path"] not in known:  # grpclib's answer lacks a content-type: clients saw UNKNOWN
        return (200, Status.UNIMPLEMENTED, f"no method {_printable(found[':path'])}", [])
    for name, value in headers:
        if name == "grpc-timeout" and not _TIMEOUT.fullmatch(value):
            return (
                200,
                Status.INVALID_ARGUMENT,
                f"grpc-timeout: {_printable(value)!r} is not a timeout (1 to 8 digits and a "
                "unit: H, M, S, m, u or n)",
                [],
            )
        if name == "grpc-encoding" and value != "identity":
            return (
                200,
                Status.UNIMPLEMENTED,
                f"grpc-encoding {_printable(value)!r} is not supported; send identity",
                [("grpc-accept-encoding", "identity")],
            )
        if name.endswith("-bin") and not _is_base64(value):
            return (
                200,
                Status.INVALID_ARGUMENT,
                f"{_printable(name)}: the value is not base64",
                [],
            )
    return None


def _is_base64(value: str) -> bool:
    if not _BASE64.fullmatch(value):
        return False
    try:
        base64.b64decode(value + "=" * (-len(value.rstrip("=")) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _printable(text: str, limit: int = 200) -> str:
    shown = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _error_code(exc: ProtocolError) -> ErrorCodes:
    code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
    return code if isinstance(code, ErrorCodes) else ErrorCodes.PROTOCOL_ERROR


def _address(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "unknown"
