"""The gRPC server: grpclib inside ``trio_asyncio.open_loop()``, on a socket we bind.

Readiness (``task_status.started``) reports the real port, so port 0 works. A graceful
stop goes through a :class:`marveld.listen.Drain` (see :meth:`GrpcFace.run`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpclib.server
import trio
import trio_asyncio
from google.protobuf.descriptor_pool import Default
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.events import RecvRequest, SendInitialMetadata, SendTrailingMetadata, listen
from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health
from grpclib.reflection._deprecated import ServerReflection as ServerReflectionV1Alpha
from grpclib.reflection.service import ServerReflection

from marveld import correlation
from marveld.grpc import wire
from marveld.grpc.bridge import PassthroughCodec, Service
from marveld.grpc.connections import ConnectionLimits, GuardedServer
from marveld.listen import BACKLOG, Drain, listen_tcp
from marveld.metrics import Metrics
from marveld.proto.google_proto_descriptor_pool import default_google_proto_descriptor_pool

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0
# Calls whose request line is logged at DEBUG: probes, every few seconds.
QUIET_SERVICES = frozenset({"grpc.health.v1.Health"})


class _Descriptors:
    """Our descriptors (betterproto2's pool) first, then protobuf's default pool, which
    holds the health and reflection services' own files."""

    def __init__(self) -> None:
        self._pools = (default_google_proto_descriptor_pool, Default())

    def __getattr__(self, name: str) -> Any:
        def lookup(*args: Any) -> Any:
            for pool in self._pools:
                try:
                    return getattr(pool, name)(*args)
                except KeyError:
                    continue
            raise KeyError(args[0] if args else name)

        return lookup


class GrpcFace:
    """Serves marveld's services plus grpc.health.v1.Health and server reflection.

    Health answers SERVING for the server as a whole while it runs; a service whose
    dependency fails (the character service while the upstream breaker is open) is marked
    NOT_SERVING with :meth:`set_serving`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        limits: ConnectionLimits | None = None,
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._host = host
        self._on_close = on_close
        self._port = port
        self._metrics = metrics
        self._limits = limits or ConnectionLimits()
        self._services: list[Service] = []
        self._statuses: dict[str, ServiceStatus] = {}
        # The database, in the server's overall status (""): a load balancer drains a
        # replica that cannot reach it.
        self._database = ServiceStatus()
        self._database.set(True)
        self._signals = ServiceStatus()  # the other replicas heard (PostgreSQL LISTEN)
        self._signals.set(True)
        self._accepting = ServiceStatus()  # NOT_SERVING from the start of a graceful stop
        self._accepting.set(True)
        self._before_close: list[Callable[[], Awaitable[None]]] = []

    def serve(self, *services: Service) -> None:
        for service in services:
            self._services.append(service)
            self._statuses[service.name] = ServiceStatus()
            self._statuses[service.name].set(True)

    def before_close(self, hook: Callable[[], Awaitable[None]]) -> None:
        """``await hook()`` (trio) at shutdown before the server closes: server streams end
        there with a status of their own, since ``Server.close()`` cancels handlers."""
        self._before_close.append(hook)

    def set_serving(self, service: str, serving: bool) -> None:
        """Plain synchronous code: callable from trio (the asyncio loop runs in this thread)."""
        self._statuses[service].set(serving)

    def set_database_serving(self, serving: bool) -> None:
        """The overall status ("") follows the database: NOT_SERVING while it is away."""
        self._database.set(serving)

    def set_listening(self, serving: bool) -> None:
        """... and the other replicas' signals: NOT_SERVING while they may be missed."""
        self._signals.set(serving)

    def set_draining(self) -> None:
        """Every service, and the server as a whole, NOT_SERVING from now on: a graceful
        stop has begun (health watchers and load balancers move away)."""
        self._accepting.set(False)

    def _refused(self, path: str, status: Status) -> None:
        """A call answered before grpclib saw it (connections.py): counted like any other
        call of a method we serve (an unknown path would make label values unbounded)."""
        if path:
            _, service, method = path.split("/")
            self._metrics.rpc_start(service, method)
            self._metrics.rpc_end(service, method, status.name, 0.0)

    def _server(self) -> GuardedServer:
        names = [s.name for s in self._services]
        names += ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]
        overall = [self._database, self._signals, self._accepting]
        checks: dict[Any, list[ServiceStatus]] = {OVERALL: overall}
        checks.update({s: [self._statuses[s.name], self._accepting] for s in self._services})
        pool = _Descriptors()
        # HTTP/2 pings on connections with calls in flight (long streams included): a peer
        # that does not answer within keepalive_timeout is dropped, and its streams with it.
        limits = self._limits
        server = GuardedServer(
            [
                *self._services,
                wire.strict_service(Health(checks)),
                wire.strict_service(ServerReflection(_service_names=names, _pool=pool)),
                wire.strict_service(ServerReflectionV1Alpha(_service_names=names, _pool=pool)),
            ],
            limits=limits,
            on_refused=self._refused,
            on_close=self._on_close,
            codec=PassthroughCodec(),
            config=Configuration(
                _keepalive_time=limits.keepalive_time, _keepalive_timeout=limits.keepalive_timeout
            ),
            # Named, not left to grpclib: it drops error details (RetryInfo) when a custom
            # codec is passed and no details codec is.
            status_details_codec=ProtoStatusDetailsCodec(),
        )
        _count_rpcs(server, self._metrics)
        return server

    async def run(
        self,
        drain: Drain | None = None,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled. With ``drain``, once it is requested: end the
        notification streams (the before-close hooks), stop listening, GOAWAY every
        connection, and set ``drain.finished`` when the last connection has closed; then wait to be
        cancelled. Cancelled first, the calls still running are cancelled (within
        :data:`SHUTDOWN_GRACE_SECONDS` for the hooks and the handlers to unwind)."""
        sock = listen_tcp(self._host, self._port, "grpc.listen")
        port = int(sock.getsockname()[1])
        async with trio_asyncio.open_loop():
            server = self._server()
            # asyncio listens on the socket again, with a backlog of 100 unless told: a
            # burst of connections (clients reconnecting at once) then overflowed the
            # kernel's accept queue and 1 in 3 of 1,500 was reset (failed SYN cookies).
            await trio_asyncio.aio_as_trio(server.start)(sock=sock, backlog=BACKLOG)
            log.info("grpc listening on %s:%d", self._host, port)
            hooks = list(self._before_close)
            try:
                task_status.started(port)
                if drain is not None:
                    await drain.requested.wait()
                    # Streams end first: a grpclib client drops every call of a connection
                    # the moment it reads a GOAWAY, and so would miss the resume cursor.
                    while hooks:
                        await hooks.pop(0)()
                    await trio_asyncio.aio_as_trio(_drain)(server)
                    drain.refusing.set()
                    await drain.until_closed(lambda: server.open_connections)
                await trio.sleep_forever()
            finally:
                with trio.move_on_after(SHUTDOWN_GRACE_SECONDS, shield=True):
                    for hook in hooks:
                        await hook()
                    server.close()
                    await trio_asyncio.aio_as_trio(server.wait_closed)()
                    # Closing a transport closes its socket in a callback; let those run
                    # before the loop goes away.
                    await trio_asyncio.aio_as_trio(asyncio.sleep)(0.01)
                sock.close()


async def _drain(server: GuardedServer) -> None:
    server.drain()  # on the asyncio side: it writes to transports and sets timers


_CALL: contextvars.ContextVar[tuple[str, str, float]] = contextvars.ContextVar("marveld_rpc")


def _count_rpcs(server: grpclib.server.Server, metrics: Metrics) -> None:
    """grpc_server_* metrics, a correlation id and one log line for every RPC, ours and
    health/reflection alike. grpclib sends these events from the task that handles the
    call, so context variables join them (and the bridge carries the id into trio)."""

    async def on_request(event: RecvRequest) -> None:
        _, service, method = event.method_name.split("/")
        metrics.rpc_start(service, method)
        sent = (event.metadata.get(name) for name in correlation.REQUEST_HEADERS)
        correlation.CORRELATION_ID.set(
            correlation.choose(value if isinstance(value, str) else None for value in sent)
        )
        _CALL.set((service, method, time.perf_counter()))

    async def on_headers(event: SendInitialMetadata) -> None:
        if (correlation_id := correlation.CORRELATION_ID.get()) is not None:
            event.metadata[correlation.RESPONSE_HEADER] = correlation_id

    async def on_trailers(event: SendTrailingMetadata) -> None:
        if (correlation_id := correlation.CORRELATION_ID.get()) is not None:
            event.metadata[correlation.RESPONSE_HEADER] = correlation_id
        call = _CALL.get(None)
        if call is not None:
            service, method, started = call
            seconds = time.perf_counter() - started
            metrics.rpc_end(service, method, event.status.name, seconds)
            correlation.log_request(
                log,
                "grpc",
                f"/{service}/{method}",
                event.status.name,
                seconds,
                quiet=service in QUIET_SERVICES,
            )

    listen(server, RecvRequest, on_request)
    listen(server, SendInitialMetadata, on_headers)
    listen(server, SendTrailingMetadata, on_trailers)
