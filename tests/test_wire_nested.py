"""Every request of every method served, ours and the standard ones (health, both reflection
services), is checked below its top level before a handler runs: hostile bytes are built from
each request type's descriptor, one field path at a time (wrong wire types, truncated values,
invalid UTF-8, out-of-range 32-bit ints, bad packed lists, nested messages), sent raw over a
real connection, and must come back INVALID_ARGUMENT naming that path; never UNKNOWN or
INTERNAL, and with no error logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.struct_pb2 import Struct, Value
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1 import health_pb2
from grpclib.reflection.v1 import reflection_pb2
from grpclib.reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2

from marveld.grpc import validate
from marveld.proto.marvel import v1 as pb
from tests.calls import TIMEOUT, Raw, raw_call, status_of
from tests.conftest import Running

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
_VARINT_TYPES = {
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM,
}  # fmt: skip
_INT32_TYPES = {
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_ENUM,
}  # fmt: skip
_FIXED32_TYPES = {
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_FLOAT,
}  # fmt: skip
_LEN_TYPES = {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE}


def _services() -> list[Any]:
    """Every service marveld serves: the marvel.v1 files', then the standard ones."""
    files = {v.DESCRIPTOR.file for v in vars(pb).values() if hasattr(v, "DESCRIPTOR")}
    ours = [s for f in sorted(files, key=lambda f: f.name) for s in f.services_by_name.values()]
    standard = [
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        reflection_v1alpha_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ]
    return [*ours, *standard]


METHODS: list[MethodDescriptor] = [m for s in _services() for m in s.methods]


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, LEN) + varint(len(payload)) + payload


def hostile_cases(message: Descriptor, depth: int = 0) -> Iterator[tuple[str, bytes, str]]:
    """(field path, message bytes, what the refusal says) for each field of ``message``, its
    nested messages' fields included."""
    first = message.fields_by_number.get(1)
    yield first.name if first else "field 1", b"\x0b", "wire type 3 (groups are not proto3)"
    yield "", b"\x80", "truncated"  # a field key cut short
    for field in message.fields:
        name, number, kind = field.name, field.number, field.type
        packable = field.is_repeated and kind not in _LEN_TYPES
        if kind in _VARINT_TYPES:
            yield name, key(number, FIXED32) + b"\0\0\0\0", "wrong wire type for"
            yield name, key(number, VARINT) + b"\xff" * 10 + b"\x01", "longer than 10 bytes"
            yield name, key(number, VARINT) + b"\xff", "truncated"
        elif kind in _FIXED32_TYPES:
            yield name, key(number, FIXED64) + b"\0" * 8, "wrong wire type for"
            yield name, key(number, FIXED32) + b"\0\0", "truncated"
        elif kind not in _LEN_TYPES:  # 64-bit fixed
            yield name, key(number, VARINT) + b"\x01", "wrong wire type for"
            yield name, key(number, FIXED64) + b"\0" * 7, "truncated"
        else:
            yield name, key(number, VARINT) + b"\x01", "wrong wire type for"
            yield name, key(number, LEN) + varint(5) + b"ab", "truncated"
        if kind in _INT32_TYPES:
            yield name, key(number, VARINT) + varint(1 << 32), "out of range for"
        if packable and kind in _VARINT_TYPES:
            yield name, length_delimited(number, b"\x01\x80"), "truncated"
        elif packable:
            yield name, length_delimited(number, b"\0\0\0"), "is not a multiple of"
        if kind == FieldDescriptor.TYPE_STRING:
            yield name, length_delimited(number, "sp\u00efder".encode()[:3]), "not valid UTF-8"
            yield name, length_delimited(number, b"\xed\xa0\x80"), "not valid UTF-8"  # U+D800
        if kind == FieldDescriptor.TYPE_MESSAGE and depth < 4:
            for path, inner, reason in hostile_cases(field.message_type, depth + 1):
                yield f"{name}.{path}" if path else name, length_delimited(number, inner), reason


def _call(method: MethodDescriptor, data: bytes) -> Any:
    path = f"/{method.containing_service.full_name}/{method.name}"
    cardinality = next(
        c
        for c in Cardinality
        if (c.client_streaming, c.server_streaming)
        == (method.client_streaming, method.server_streaming)
    )

    async def go(channel: Channel) -> tuple[Status, str]:
        async with channel.request(path, cardinality, Raw, Raw, timeout=TIMEOUT) as stream:
            await stream.send_message(Raw(data), end=True)
            try:
                await stream.recv_message()
            except GRPCError as error:
                return error.status, error.message or ""
            return Status.OK, ""

    return go


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
async def test_every_field_of_every_request_is_checked(
    marveld: Running, caplog: pytest.LogCaptureFixture, method: MethodDescriptor
) -> None:
    caplog.set_level(logging.WARNING)
    request = method.input_type
    cases = list(hostile_cases(request))
    for path, data, reason in cases:
        status, message = await marveld.client.call(_call(method, data))
        where = f"{path}: " if path else ""
        assert status is Status.INVALID_ARGUMENT, (path, data, status, message)
        assert message.startswith(f"the request is not a valid {request.name}: {where}"), (
            path,
            data,
            message,
        )
        assert reason in message, (path, data, message)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors][:5]


def test_the_methods_cover_every_nested_field_kind() -> None:
    """The enumeration above really reaches below the top level: nested messages, repeated
    and packed fields, and both reflection services' requests are among the cases."""
    names = {m.full_name for m in METHODS}
    assert {
        "grpc.health.v1.Health.Check",
        "grpc.health.v1.Health.Watch",
        "grpc.reflection.v1.ServerReflection.ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo",
        "marvel.v1.NotificationService.UpdateSubscription",
    } <= names
    paths = {path for m in METHODS for path, _, _ in hostile_cases(m.input_type)}
    assert {
        "filter.character_ids",
        "filter.name_prefix",
        "file_containing_extension.extension_number",
    } <= paths


async def test_every_service_served_is_enumerated(marveld: Running) -> None:
    """Server reflection's own list of services is covered by METHODS: a service added to
    the server without a place here fails."""

    async def listed(channel: Channel) -> list[str]:
        request = reflection_pb2.ServerReflectionRequest(list_services="*")
        async with channel.request(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            Cardinality.STREAM_STREAM,
            reflection_pb2.ServerReflectionRequest,
            reflection_pb2.ServerReflectionResponse,
            timeout=TIMEOUT,
        ) as stream:
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            assert reply is not None
            return [s.name for s in reply.list_services_response.service]

    served = set(await marveld.client.call(listed))
    assert served
    assert served <= {m.containing_service.full_name for m in METHODS}


SUBSCRIPTION = "/marvel.v1.NotificationService/UpdateSubscription"
SUBSCRIBE = "/marvel.v1.NotificationService/Subscribe"


@pytest.mark.parametrize("path", [SUBSCRIPTION, SUBSCRIBE])
async def test_the_reported_nested_wrong_wire_types(marveld: Running, path: str) -> None:
    """Issue 13: a filter whose character_ids arrive as fixed64, or its name_prefix as a
    varint, reached the handler and came back INTERNAL."""
    number = 1 if path == SUBSCRIPTION else 2
    as_fixed64 = length_delimited(number, key(1, FIXED64) + b"\1\0\0\0\0\0\0\0")
    error = await status_of(marveld, raw_call(path, as_fixed64))
    assert error.status is Status.INVALID_ARGUMENT
    assert "filter.character_ids: wrong wire type for an int64" in (error.message or "")
    as_varint = length_delimited(number, key(2, VARINT) + b"\x01")
    error = await status_of(marveld, raw_call(path, as_varint))
    assert error.status is Status.INVALID_ARGUMENT
    assert "filter.name_prefix: wrong wire type for a string" in (error.message or "")


async def test_packed_and_unpacked_lists_and_unknown_fields_are_accepted(
    marveld: Running,
) -> None:
    """Well-formed requests get past the checks to the handler (which wants a token): a
    packed list, the same list unpacked, and unknown fields at every level, a deeply nested
    unknown one included (its bytes are skipped, never parsed as a message)."""
    ids = [1009610, 1, 2**63 - 1, -1]
    packed = length_delimited(1, b"".join(varint(i % 2**64) for i in ids))
    unpacked = b"".join(key(1, VARINT) + varint(i % 2**64) for i in ids)
    deep = b"\x08\x01"
    for _ in range(2000):
        deep = length_delimited(15, deep)
    unknown = (
        key(99, FIXED32) + b"\0\0\0\0" + length_delimited(98, deep) + key(97, FIXED64) + b"\0" * 8
    )
    for inner in (packed, unpacked, packed + unknown, b""):
        filter_ = length_delimited(1, inner + length_delimited(2, b"spi"))
        error = await status_of(marveld, raw_call(SUBSCRIPTION, filter_ + unknown))
        assert error.status is Status.UNAUTHENTICATED, error.message


async def test_health_and_reflection_still_answer_and_refuse_what_is_malformed(
    marveld: Running,
) -> None:
    """The wrapped standard handlers: a good request is answered; Check without a message
    (a client-streaming call, as far as the client knows) is INVALID_ARGUMENT (was an
    AssertionError, UNKNOWN); each message of reflection's bidi
    stream is checked, so a bad second one ends the stream after the first was answered."""
    check = "/grpc.health.v1.Health/Check"
    good = health_pb2.HealthCheckRequest(service="marvel.v1.AuthService").SerializeToString()
    reply = await marveld.client.call(raw_call(check, good))
    assert reply is not None
    assert health_pb2.HealthCheckResponse.FromString(reply.data).status == (
        health_pb2.HealthCheckResponse.SERVING
    )

    async def no_message(channel: Channel) -> object:
        async with channel.request(check, Cardinality.STREAM_UNARY, Raw, Raw, timeout=TIMEOUT) as s:
            await s.send_request(end=True)
            return await s.recv_message()

    error = await status_of(marveld, no_message)
    assert (error.status, error.message) == (
        Status.INVALID_ARGUMENT,
        "the call carries no request message",
    )

    async def good_then_bad(channel: Channel) -> tuple[Any, GRPCError | None]:
        first = None
        try:
            async with channel.request(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                Cardinality.STREAM_STREAM,
                Raw,
                Raw,
                timeout=TIMEOUT,
            ) as stream:
                listing = reflection_pb2.ServerReflectionRequest(list_services="*")
                await stream.send_message(Raw(listing.SerializeToString()))
                first = await stream.recv_message()
                await stream.send_message(Raw(length_delimited(7, b"\xff")), end=True)
                await stream.recv_message()
        except GRPCError as exc:  # from the last recv or, once it saw the end, from __aexit__
            return first, exc
        return first, None

    first, refusal = await marveld.client.call(good_then_bad)
    assert first is not None
    services = reflection_pb2.ServerReflectionResponse.FromString(first.data)
    assert "marvel.v1.AuthService" in {s.name for s in services.list_services_response.service}
    assert refusal is not None
    assert refusal.status is Status.INVALID_ARGUMENT
    assert refusal.message == (
        "the request is not a valid ServerReflectionRequest: list_services: not valid UTF-8"
    )


def _struct_nested(levels: int) -> bytes:
    """A google.protobuf.Struct holding a struct ``levels`` deep: {"k": {"k": ...}}."""
    value = Value(struct_value=Struct())
    for _ in range(levels - 1):
        outer = Value()
        outer.struct_value.fields["k"].CopyFrom(value)
        value = outer
    return bytes(value.struct_value.SerializeToString())


def test_nesting_is_bounded_even_for_recursive_types() -> None:
    """None of our requests nests more than two messages, but the walk would recurse
    through a recursive type (Struct: fields -> Value -> Struct ...) as deep as the bytes
    say; it stops at MAX_DEPTH messages and says so."""
    schema = validate.Schema.of(Struct)
    # Struct > entry > Value > Struct: three messages a level.
    schema.check(_struct_nested(validate.MAX_DEPTH // 3))
    with pytest.raises(validate.Malformed) as info:
        schema.check(_struct_nested(validate.MAX_DEPTH))
    assert info.value.reason == f"messages nested more than {validate.MAX_DEPTH} deep"
    assert str(info.value).startswith("fields.value.struct_value.fields.value.struct_value")


@pytest.mark.parametrize(
    ("message", "data", "expected"),
    [
        (pb.ListNotificationsRequest, b"\x10" + varint(2**31), "limit: 2147483648 is out of range"),
        (pb.ListNotificationsRequest, b"\x10" + varint(2**64 - 2**31), None),  # -2**31
        (pb.ListNotificationsRequest, b"\x10" + varint(2**64 - 2**31 - 1), "out of range"),
        (pb.GetCharacterRequest, b"\x08" + varint(2**64 - 1), None),  # int64 -1
        (pb.GetCharacterRequest, b"\x08" + b"\xff" * 9 + b"\x02", "larger than 64 bits"),
        (pb.SubscribeRequest, b"\x12\x00", None),  # an empty filter
        (pb.PurgeCacheRequest, b"\x18\x02", None),  # a bool is any varint, as protobuf says
        (Struct, b"\x0a\x07\x0a\x01k\x12\x02\x08\x07", None),  # a map entry, enum value 7
        (Struct, b"\x0a\x05\x0a\x03\xc3\x28\x00", "fields.key: not valid UTF-8"),
        (pb.SubscribeRequest, b"\x00\x00", "field number 0 is not allowed"),
    ],
)
def test_ranges_maps_and_edges(message: type, data: bytes, expected: str | None) -> None:
    schema = validate.Schema.of(message)
    if expected is None:
        schema.check(data)
        return
    with pytest.raises(validate.Malformed) as info:
        schema.check(data)
    assert expected in str(info.value)


def _every_kind() -> Descriptor:
    """A message with the field kinds our requests lack (fixed, packed fixed, 32-bit unsigned
    and zigzag), built as a real descriptor in a pool of its own."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="marveld_test_every_kind.proto", package="marveld.test", syntax="proto3"
    )
    message = proto.message_type.add(name="Every")
    f = descriptor_pb2.FieldDescriptorProto
    fields = [
        ("u32", f.TYPE_UINT32, f.LABEL_OPTIONAL),
        ("s32", f.TYPE_SINT32, f.LABEL_OPTIONAL),
        ("f32s", f.TYPE_FIXED32, f.LABEL_REPEATED),
        ("sf64s", f.TYPE_SFIXED64, f.LABEL_REPEATED),
        ("d", f.TYPE_DOUBLE, f.LABEL_OPTIONAL),
        ("ids", f.TYPE_INT32, f.LABEL_REPEATED),
        ("raw", f.TYPE_BYTES, f.LABEL_OPTIONAL),
    ]
    for number, (name, kind, label) in enumerate(fields, 1):
        message.field.add(name=name, number=number, type=kind, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool.FindMessageTypeByName("marveld.test.Every")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (key(1, VARINT) + varint(2**32 - 1), None),
        (key(1, VARINT) + varint(2**32), "u32: 4294967296 is out of range for a uint32"),
        (key(2, VARINT) + varint(2**32 - 1), None),  # zigzag -2**31
        (key(2, VARINT) + varint(2**32), "s32: 4294967296 is out of range for a sint32"),
        (length_delimited(3, b"\0" * 8) + key(3, FIXED32) + b"\0" * 4, None),  # packed, unpacked
        (length_delimited(3, b"\0" * 6), "f32s: a packed fixed32 list whose length is not a "),
        (key(3, FIXED32) + b"\0\0", "f32s: truncated"),
        (length_delimited(4, b"\0" * 16), None),
        (length_delimited(4, b"\0" * 12), "sf64s: a packed sfixed64 list whose length is not a "),
        (key(5, FIXED64) + b"\0" * 8, None),
        (key(5, VARINT) + b"\x01", "d: wrong wire type for a double"),
        (key(5, FIXED32) + b"\0" * 4, "d: wrong wire type for a double"),
        (length_delimited(6, varint(1) + varint(2**64 - 1)), None),  # packed [1, -1]
        (length_delimited(6, varint(1) + varint(2**32)), "ids: 4294967296 is out of range for"),
        (length_delimited(7, b"\xff\xfe"), None),  # bytes need not be UTF-8
    ],
)
def test_every_kind_of_field(data: bytes, expected: str | None) -> None:
    schema = validate.Schema(_every_kind())
    if expected is None:
        schema.check(data)
        return
    with pytest.raises(validate.Malformed) as info:
        schema.check(data)
    assert str(info.value).startswith(expected)
