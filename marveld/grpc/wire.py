"""What grpclib leaves to the application: a size cap on requests, strict decoding, and
refusals that carry a ``retry-after`` trailer and a ``google.rpc.RetryInfo`` detail.

All of it is plain asyncio-side code: the bridge uses it, and so can a handler that answers
without hopping into trio (a cache fast path).
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterator
from typing import Any

import betterproto2
import grpclib.server
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from grpclib.const import Status
from grpclib.exceptions import GRPCError

log = logging.getLogger(__name__)

# grpc-core refuses requests over 4 MiB by default; ours are a few hundred bytes at most.
MAX_REQUEST_BYTES = 1 << 20
_PREFIX = struct.Struct(">?I")  # gRPC message framing: compressed flag, length

# The wire types each protobuf field type may arrive with (a repeated scalar may be packed).
_WIRE_TYPES = {
    **{t: {betterproto2.WIRE_VARINT} for t in betterproto2.WIRE_VARINT_TYPES},
    **{t: {betterproto2.WIRE_FIXED_32} for t in betterproto2.WIRE_FIXED_32_TYPES},
    **{t: {betterproto2.WIRE_FIXED_64} for t in betterproto2.WIRE_FIXED_64_TYPES},
    **{t: {betterproto2.WIRE_LEN_DELIM} for t in betterproto2.WIRE_LEN_DELIM_TYPES},
}


async def receive_request(stream: grpclib.server.Stream[Any, Any], request_type: type) -> Any:
    """The call's one request message, decoded strictly.

    RESOURCE_EXHAUSTED past :data:`MAX_REQUEST_BYTES`, INVALID_ARGUMENT for a missing,
    truncated or malformed message, UNIMPLEMENTED for a compressed one: never UNKNOWN.

    grpclib has no receive limit (grpc-core's ``max_receive_message_length``): its
    ``Stream.recv_message`` buffers whatever length the 5-byte prefix announces. So this reads
    the prefix itself and refuses before buffering the body, through grpclib's own
    ``protocol.Stream`` (``stream._stream``) and codec (``stream._codec``). A grpclib upgrade
    that changes those fails tests/test_wire.py.
    """
    raw = stream._stream
    try:
        prefix = await raw.recv_data(_PREFIX.size)
        if not prefix:
            raise GRPCError(Status.INVALID_ARGUMENT, "the call carries no request message")
        compressed, length = _PREFIX.unpack(prefix)
        if compressed:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed requests are not supported")
        if length > MAX_REQUEST_BYTES:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"the request is {length} bytes; the limit is {MAX_REQUEST_BYTES}",
            )
        data = await raw.recv_data(length)
    except AssertionError:  # grpclib's Buffer: the stream ended inside the message
        raise GRPCError(Status.INVALID_ARGUMENT, "the request message is truncated") from None
    return decode(data, request_type, stream._codec)


def decode(data: bytes, message_type: type, codec: Any) -> Any:
    """``data`` as a ``message_type``; INVALID_ARGUMENT when it is not one.

    betterproto2 does not check wire types: ``b"\\x08\\x01"`` decodes as a string field
    holding the int 1. Every field is checked against its declared type first.
    """
    try:
        _check_wire_types(data, message_type)
        return codec.decode(data, message_type)
    except GRPCError:
        raise
    except Exception as exc:  # any parse failure is the client's bytes, not our bug
        log.debug("undecodable %s: %s", message_type.__name__, type(exc).__name__)
        raise GRPCError(
            Status.INVALID_ARGUMENT, f"the request is not a valid {message_type.__name__}"
        ) from None


def _check_wire_types(data: bytes, message_type: type) -> None:
    meta = getattr(message_type, "_betterproto", None)
    if meta is None:  # not a betterproto2 message (protobuf's own parser is strict)
        return
    for number, wire_type in _fields(data):
        name = meta.field_name_by_number.get(number)
        if name is None:
            continue  # unknown fields are kept aside by the parser, as protobuf allows
        field = meta.meta_by_field_name[name]
        allowed = set(_WIRE_TYPES.get(field.proto_type, ()))
        if field.repeated and field.proto_type in betterproto2.PACKED_TYPES:
            allowed.add(betterproto2.WIRE_LEN_DELIM)
        if wire_type not in allowed:
            raise GRPCError(
                Status.INVALID_ARGUMENT, f"{name}: wrong wire type for a {field.proto_type}"
            )


def _fields(data: bytes) -> Iterator[tuple[int, int]]:
    """(field number, wire type) of each field; ValueError when ``data`` is cut short or
    uses a wire type proto3 does not have (betterproto2 reads both silently)."""
    sizes = {betterproto2.WIRE_FIXED_64: 8, betterproto2.WIRE_FIXED_32: 4}
    i = 0
    while i < len(data):
        key, i = betterproto2.decode_varint(data, i)
        wire_type = key & 0x7
        if wire_type == betterproto2.WIRE_VARINT:
            _, i = betterproto2.decode_varint(data, i)
        elif wire_type == betterproto2.WIRE_LEN_DELIM:
            length, i = betterproto2.decode_varint(data, i)
            i += length
        elif wire_type in sizes:
            i += sizes[wire_type]
        else:
            raise ValueError(f"wire type {wire_type}")
        if i > len(data):
            raise ValueError("truncated field")
        yield key >> 3, wire_type


def rate_limited(message: str, retry_after: float) -> GRPCError:
    """RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` detail of ``retry_after`` seconds."""
    seconds = max(0.0, retry_after)
    whole = math.floor(seconds)
    delay = Duration(seconds=whole, nanos=min(999_999_999, round((seconds - whole) * 1e9)))
    return GRPCError(Status.RESOURCE_EXHAUSTED, message, [RetryInfo(retry_delay=delay)])


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
