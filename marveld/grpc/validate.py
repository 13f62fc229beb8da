"""Strict protobuf wire checking, driven by a message's descriptor, before any parser sees it.

betterproto2 checks neither wire types nor field values: ``b"\\x12\\x02\\x10\\x01"`` parses as a
SubscribeRequest whose ``filter.name_prefix`` is the int 1, and the handler fails on it far
from the cause. protobuf's own parser is stricter but says only "Error parsing message". So
every request is walked here first, against the descriptor of its type (betterproto2 and
protobuf classes both carry one): wire types, lengths, UTF-8 of strings, ranges of 32-bit
varints, packed and unpacked repeated fields, map entries and nested messages, recursively
and at most :data:`MAX_DEPTH` messages deep. A failure is :class:`Malformed` naming the field
by its dotted path (``filter.character_ids``). Unknown fields are allowed, as proto3 wants,
but must still be well formed.

A :class:`Schema` is compiled once per request type, when a handler is built; checking a
small request then costs a few microseconds.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor

MAX_DEPTH: Final = 32
"""Messages nested deeper than this are refused (protobuf stops at 100; our requests nest 2)."""

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = range(6)
_FIXED_SIZES: Final = {FIXED64: 8, FIXED32: 4}
_MAX_FIELD_NUMBER = (1 << 29) - 1
_INT32_LOW = (1 << 64) - (1 << 31)  # a negative int32 is its sign-extended 64-bit varint

# What is checked of a field's value, by kind.
_ANY_VARINT, _INT32, _UINT32, _FIXED32, _FIXED64, _STRING, _BYTES, _MESSAGE, _GROUP = range(9)
_KINDS: Final = {
    FieldDescriptor.TYPE_INT64: (_ANY_VARINT, "int64"),
    FieldDescriptor.TYPE_UINT64: (_ANY_VARINT, "uint64"),
    FieldDescriptor.TYPE_SINT64: (_ANY_VARINT, "sint64"),
    FieldDescriptor.TYPE_INT32: (_INT32, "int32"),
    FieldDescriptor.TYPE_ENUM: (_INT32, "enum"),
    FieldDescriptor.TYPE_UINT32: (_UINT32, "uint32"),
    FieldDescriptor.TYPE_SINT32: (_UINT32, "sint32"),  # zigzag: any 32-bit pattern
    # Any varint is a bool (true when not 0): protobuf's conformance suite asks for that.
    FieldDescriptor.TYPE_BOOL: (_ANY_VARINT, "bool"),
    FieldDescriptor.TYPE_FIXED32: (_FIXED32, "fixed32"),
    FieldDescriptor.TYPE_SFIXED32: (_FIXED32, "sfixed32"),
    FieldDescriptor.TYPE_FLOAT: (_FIXED32, "float"),
    FieldDescriptor.TYPE_FIXED64: (_FIXED64, "fixed64"),
    FieldDescriptor.TYPE_SFIXED64: (_FIXED64, "sfixed64"),
    FieldDescriptor.TYPE_DOUBLE: (_FIXED64, "double"),
    FieldDescriptor.TYPE_STRING: (_STRING, "string"),
    FieldDescriptor.TYPE_BYTES: (_BYTES, "bytes"),
    FieldDescriptor.TYPE_MESSAGE: (_MESSAGE, "message"),
    FieldDescriptor.TYPE_GROUP: (_GROUP, "group"),
}
_WIRE_OF_KIND: Final = {
    _ANY_VARINT: VARINT, _INT32: VARINT, _UINT32: VARINT,
    _FIXED32: FIXED32, _FIXED64: FIXED64,
    _STRING: LEN, _BYTES: LEN, _MESSAGE: LEN, _GROUP: START_GROUP,
}  # fmt: skip
_PACKABLE: Final = frozenset({_ANY_VARINT, _INT32, _UINT32, _FIXED32, _FIXED64})


class Malformed(ValueError):
    """What is wrong with a message, and where: ``path`` is the field names from the top."""

    def __init__(self, reason: str, path: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path if path is not None else []

    def __str__(self) -> str:
        return f"{'.'.join(self.path)}: {self.reason}" if self.path else self.reason


class _Field:
    __slots__ = ("kind", "message", "name", "packable", "type_name", "wire")

    def __init__(self, descriptor: Any, message: _Message | None) -> None:
        self.kind, self.type_name = _KINDS[descriptor.type]
        self.name: str = descriptor.name
        self.wire = _WIRE_OF_KIND[self.kind]
        # Parsers must take a repeated scalar packed or not, whatever the .proto says.
        self.packable = bool(descriptor.is_repeated) and self.kind in _PACKABLE
        self.message = message


class _Message:
    __slots__ = ("fields", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: dict[int, _Field] = {}


class Schema:
    """The compiled checks of one message type (and of every type it holds)."""

    def __init__(self, descriptor: Descriptor) -> None:
        self.name: str = descriptor.name
        self._root = _compile(descriptor, {})

    @classmethod
    def of(cls, message_type: type) -> Schema:
        """The schema of a betterproto2 or protobuf message class (both have DESCRIPTOR)."""
        return cls(message_type.DESCRIPTOR)  # type: ignore[attr-defined]

    def check(self, data: bytes) -> None:
        """Returns when ``data`` is a well-formed message of this type, else raises Malformed."""
        _check(data, 0, len(data), self._root, 0)


def _compile(descriptor: Any, done: dict[str, _Message]) -> _Message:
    """The plan of ``descriptor``; ``done`` ties recursive types (Struct/Value) in a loop."""
    if (known := done.get(descriptor.full_name)) is not None:
        return known
    plan = done[descriptor.full_name] = _Message(descriptor.name)
    for field in descriptor.fields:
        nested = field.message_type
        inner = _compile(nested, done) if field.type == FieldDescriptor.TYPE_MESSAGE else None
        plan.fields[field.number] = _Field(field, inner)
    return plan


def _varint(data: bytes, i: int, end: int) -> tuple[int, int]:
    """The varint at ``i`` and the index after it: at most 10 bytes, at most 64 bits."""
    value = shift = 0
    while i < end:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >> 64:
                raise Malformed("a varint larger than 64 bits")
            return value, i
        shift += 7
        if shift >= 70:
            raise Malformed("a varint longer than 10 bytes")
    raise Malformed("truncated")


def _check(data: bytes, i: int, end: int, plan: _Message, depth: int) -> None:
    """Walks the fields of one message in ``data[i:end]``."""
    fields = plan.fields
    while i < end:
        key = data[i]
        if key < 0x80:
            i += 1
        else:
            key, i = _varint(data, i, end)
        number, wire = key >> 3, key & 7
        field = fields.get(number)
        try:
            if number == 0 or number > _MAX_FIELD_NUMBER:
                raise Malformed(f"field number {number} is not allowed")
            if wire == VARINT:
                if i < end and data[i] < 0x80:
                    value = data[i]
                    i += 1
                else:
                    value, i = _varint(data, i, end)
            elif wire == LEN:
                if i < end and data[i] < 0x80:
                    length = data[i]
                    i += 1
                else:
                    length, i = _varint(data, i, end)
                if length > end - i:
                    raise Malformed("truncated")
                start, i = i, i + length
            elif wire in _FIXED_SIZES:
                i += _FIXED_SIZES[wire]
                if i > end:
                    raise Malformed("truncated")
            else:
                raise Malformed(f"wire type {wire} (groups are not proto3)")
            if field is None:
                continue  # unknown: allowed, and its bytes are well formed
            if wire == field.wire:
                if wire == VARINT:
                    _in_range(value, field)
                elif wire == LEN:
                    _check_len(data, start, i, field, depth)
            elif wire == LEN and field.packable:
                _check_packed(data, start, i, field)
            else:
                raise Malformed(f"wrong wire type for {_a(field.type_name)}")
        except Malformed as exc:
            if field is not None:
                exc.path.insert(0, field.name)
            elif number:
                exc.path.insert(0, f"field {number}")
            raise


def _check_len(data: bytes, start: int, end: int, field: _Field, depth: int) -> None:
    if field.kind == _STRING:
        try:
            data[start:end].decode()
        except UnicodeDecodeError:
            raise Malformed("not valid UTF-8") from None
    elif field.kind == _MESSAGE:
        if depth + 1 >= MAX_DEPTH:
            raise Malformed(f"messages nested more than {MAX_DEPTH} deep")
        assert field.message is not None
        _check(data, start, end, field.message, depth + 1)


def _check_packed(data: bytes, i: int, end: int, field: _Field) -> None:
    """A packed repeated scalar: its elements back to back, filling the length exactly."""
    if field.wire == VARINT:
        while i < end:
            if data[i] < 0x80:
                value = data[i]
                i += 1
            else:
                value, i = _varint(data, i, end)
            _in_range(value, field)
        return
    size = _FIXED_SIZES[field.wire]
    if (end - i) % size:
        raise Malformed(f"a packed {field.type_name} list whose length is not a multiple of {size}")


def _in_range(value: int, field: _Field) -> None:
    """A 32-bit varint field's value must fit it (parsers would silently cut it down)."""
    kind = field.kind
    if value < 0x80 or kind == _ANY_VARINT:
        return
    if kind == _INT32 and (value < (1 << 31) or value >= _INT32_LOW):
        return
    if kind == _UINT32 and value < (1 << 32):
        return
    raise Malformed(f"{value} is out of range for {_a(field.type_name)}")


def _a(type_name: str) -> str:
    return f"an {type_name}" if type_name[0] in "aeio" else f"a {type_name}"
