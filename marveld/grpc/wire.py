"""What grpclib leaves to the application: a size cap on requests, strict decoding (every
request of every service, grpclib's health and reflection included through
:func:`strict_service`, is checked by :mod:`marveld.grpc.validate` before a handler runs), and
refusals that carry a ``retry-after`` trailer and a ``google.rpc.RetryInfo`` detail.

All of it is plain asyncio-side code: the bridge uses it, and so can a handler that answers
without hopping into trio (a cache fast path).
"""

from __future__ import annotations

import logging
import math
import struct
from typing import TYPE_CHECKING, Any

import grpclib.const
import grpclib.server
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.stream import StreamIterator

from marveld.grpc.validate import Malformed, Schema

if TYPE_CHECKING:
    from grpclib._typing import IServable

log = logging.getLogger(__name__)

# grpc-core refuses requests over 4 MiB by default; ours are a few hundred bytes at most.
MAX_REQUEST_BYTES = 1 << 20
_PREFIX = struct.Struct(">?I")  # gRPC message framing: compressed flag, length


class Request:
    """How a handler reads its request type: the checks are compiled once, when the handler is
    built, and run on every message before any parser or handler sees it."""

    __slots__ = ("message_type", "schema")

    def __init__(self, message_type: type) -> None:
        self.message_type = message_type
        self.schema = Schema.of(message_type)

    async def receive(self, stream: grpclib.server.Stream[Any, Any]) -> Any:
        """The call's one request message (a unary request): INVALID_ARGUMENT when there is
        none."""
        message = await self.receive_next(stream)
        if message is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "the call carries no request message")
        return message

    async def receive_next(self, stream: grpclib.server.Stream[Any, Any]) -> Any | None:
        """The next message of the request stream, decoded strictly; None at its end.

        RESOURCE_EXHAUSTED past :data:`MAX_REQUEST_BYTES`, INVALID_ARGUMENT for a truncated or
        malformed message, UNIMPLEMENTED for a compressed one: never UNKNOWN.

        grpclib has no receive limit (grpc-core's ``max_receive_message_length``): its
        ``Stream.recv_message`` buffers whatever length the 5-byte prefix announces. So this
        reads the prefix itself and refuses before buffering the body, through grpclib's own
        ``protocol.Stream`` (``stream._stream``) and codec (``stream._codec``). A grpclib
        upgrade that changes those fails tests/test_wire.py.
        """
        raw = stream._stream
        try:
            prefix = await raw.recv_data(_PREFIX.size)
            if not prefix:
                return None
            compressed, length = _PREFIX.unpack(prefix)
            if compressed:
                raise GRPCError(Status.UNIMPLEMENTED, "compressed requests are not supported")
            if length > MAX_REQUEST_BYTES:
                raise GRPCError(
                    Status.RESOURCE_EXHAUSTED,
                    f"the request is {length} bytes; the limit is {MAX_REQUEST_BYTES}",
                )
            data = await raw.recv_data(length)
        except AssertionError:  # grpclib's Buffer: the stream ended inside the prefix or body
            raise GRPCError(Status.INVALID_ARGUMENT, "the request message is truncated") from None
        if len(data) != length:  # it ended before the body: the Buffer reads b""
            raise GRPCError(Status.INVALID_ARGUMENT, "the request message is truncated")
        return self.decode(data, stream._codec)

    def decode(self, data: bytes, codec: Any) -> Any:
        """``data`` as the request type; INVALID_ARGUMENT naming the field when it is not one.

        The schema's walk comes first: betterproto2 checks no wire types (``b"\\x08\\x01"``
        decodes as a string field holding the int 1), and protobuf's parser names no field.
        """
        name = self.message_type.__name__
        try:
            self.schema.check(data)
        except Malformed as exc:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"the request is not a valid {name}: {exc}"
            ) from None
        try:
            return codec.decode(data, self.message_type)
        except Exception as exc:  # any parse failure is the client's bytes, not our bug
            log.debug("undecodable %s: %s", name, type(exc).__name__)
            raise GRPCError(Status.INVALID_ARGUMENT, f"the request is not a valid {name}") from None


class StrictServable:
    """A grpclib IServable whose handlers read their requests through :class:`Request`."""

    def __init__(self, servable: IServable) -> None:
        self._mapping = {
            path: _strict_handler(handler) for path, handler in servable.__mapping__().items()
        }

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping


def strict_service(servable: IServable) -> StrictServable:
    """``servable`` (grpclib's Health, ServerReflection, ...) with every request checked by our
    code before its handler sees it, as ours are.

    Those handlers call ``stream.recv_message()`` themselves, which decodes with protobuf's
    parser: garbage raises DecodeError there and the client gets UNKNOWN, and the size cap is
    not applied. Each handler is given instead a stream whose ``recv_message`` is
    :meth:`Request.receive` for a unary request and :meth:`Request.receive_next` for each
    message of a request stream (reflection's bidi ServerReflectionInfo).
    """
    return StrictServable(servable)


def _strict_handler(handler: grpclib.const.Handler) -> grpclib.const.Handler:
    request = Request(handler.request_type)
    streaming = handler.cardinality.client_streaming
    inner = handler.func

    async def strict(stream: grpclib.server.Stream[Any, Any]) -> None:
        await inner(_StrictStream(stream, request, streaming))

    return grpclib.const.Handler(
        strict, handler.cardinality, handler.request_type, handler.reply_type
    )


class _StrictStream(StreamIterator[Any]):
    """grpclib's server Stream, except that messages are read through a :class:`Request`.

    Everything else (sending, metadata, deadline, peer) is the real stream's. grpclib's
    RecvMessage event is not dispatched for these messages (marveld listens to none), as for
    the requests of our own handlers.
    """

    def __init__(
        self, stream: grpclib.server.Stream[Any, Any], request: Request, streaming: bool
    ) -> None:
        self._inner = stream
        self._request = request
        self._streaming = streaming

    async def recv_message(self) -> Any:
        if self._streaming:
            return await self._request.receive_next(self._inner)
        return await self._request.receive(self._inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def rate_limited(message: str, retry_after: float) -> GRPCError:
    """RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` detail of ``retry_after`` seconds."""
    return GRPCError(Status.RESOURCE_EXHAUSTED, message, [retry_info(retry_after)])


def retry_info(retry_after: float) -> RetryInfo:
    """A ``google.rpc.RetryInfo`` detail: come back in ``retry_after`` seconds."""
    seconds = max(0.0, retry_after)
    whole = math.floor(seconds)
    delay = Duration(seconds=whole, nanos=min(999_999_999, round((seconds - whole) * 1e9)))
    return RetryInfo(retry_delay=delay)


def retry_after_seconds(error: GRPCError) -> int | None:
    """The ``retry-after`` trailer value for ``error``: its RetryInfo delay in whole seconds,
    rounded up (at least 1); None when it carries no RetryInfo."""
    for detail in error.details or ():
        if isinstance(detail, RetryInfo):
            delay = detail.retry_delay
            return max(1, int(delay.seconds) + (1 if delay.nanos > 0 else 0))
    return None


async def refuse(stream: grpclib.server.Stream[Any, Any], error: GRPCError) -> None:
    """End the call with ``error``: status, message, details, and a ``retry-after`` trailer
    when the details hold a RetryInfo.

    grpclib sends a raised GRPCError's details but no trailing metadata of ours, so a
    refusal with a retry hint sends its trailers itself.
    """
    seconds = retry_after_seconds(error)
    if seconds is None:
        raise error
    await stream.send_trailing_metadata(
        status=error.status,
        status_message=error.message,
        status_details=error.details,
        metadata={"retry-after": str(seconds)},
    )
