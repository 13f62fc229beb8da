"""The gRPC server: grpclib inside ``trio_asyncio.open_loop()``, on a socket we bind.

Readiness (``task_status.started``) reports the real port, so port 0 works.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Any

import grpclib.server
import trio
import trio_asyncio
from google.protobuf.descriptor_pool import Default
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.health.service import Health
from grpclib.reflection._deprecated import ServerReflection as ServerReflectionV1Alpha
from grpclib.reflection.service import ServerReflection

from marveld.grpc.bridge import Service
from marveld.proto.google_proto_descriptor_pool import default_google_proto_descriptor_pool

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0


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


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this. grpclib sets it per connection only when the socket's
    # proto is IPPROTO_TCP; without it Nagle's algorithm and delayed ACKs added ~40 ms to
    # every call (bench/latency.py: health check 44 ms → 0.6 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class GrpcFace:
    """Serves ``services`` plus grpc.health.v1.Health and server reflection."""

    def __init__(self, services: Sequence[Service], host: str, port: int) -> None:
        self._services = list(services)
        self._host = host
        self._port = port

    def _all_services(self) -> list[Any]:
        names = [s.name for s in self._services]
        health = Health()
        names += ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]
        pool = _Descriptors()
        return [
            *self._services,
            health,
            ServerReflection(_service_names=names, _pool=pool),
            ServerReflectionV1Alpha(_service_names=names, _pool=pool),
        ]

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        sock = bind_tcp(self._host, self._port)
        port = int(sock.getsockname()[1])
        async with trio_asyncio.open_loop():
            # Named, not left to grpclib: it drops error details (RetryInfo) when a custom
            # codec is passed and no details codec is.
            server = grpclib.server.Server(
                self._all_services(), status_details_codec=ProtoStatusDetailsCodec()
            )
            await trio_asyncio.aio_as_trio(server.start)(sock=sock)
            log.info("grpc listening on %s:%d", self._host, port)
            try:
                task_status.started(port)
                await trio.sleep_forever()
            finally:
                with trio.move_on_after(SHUTDOWN_GRACE_SECONDS, shield=True):
                    server.close()
                    await trio_asyncio.aio_as_trio(server.wait_closed)()
                sock.close()
