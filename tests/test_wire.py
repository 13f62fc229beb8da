"""What grpclib leaves to us, seen by a real client: the request size cap, strict decoding of
hostile bytes, and the RetryInfo / retry-after pair of a refusal."""

from __future__ import annotations

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from marveld.grpc import wire
from marveld.proto.marvel import v1 as pb
from tests.calls import TIMEOUT, Raw, raw_call, status_of
from tests.conftest import Running

LOGIN = "/marvel.v1.AuthService/Login"
LIST = "/marvel.v1.CharacterService/ListCharacters"


async def test_a_request_over_one_mib_is_resource_exhausted(marveld: Running) -> None:
    huge = "x" * (wire.MAX_REQUEST_BYTES + 1)

    async def go(channel: Channel) -> object:
        return await pb.AuthServiceStub(channel).login(
            pb.LoginRequest(email=huge, password="whatever"), timeout=TIMEOUT
        )

    error = await status_of(marveld, go)
    assert error.status is Status.RESOURCE_EXHAUSTED
    assert f"the limit is {wire.MAX_REQUEST_BYTES}" in (error.message or "")
    # Just under the cap the request is read, and refused for what it says.
    under = await status_of(
        marveld, raw_call(LOGIN, bytes(pb.LoginRequest(email="x" * 1000, password="p")))
    )
    assert under.status is Status.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x08\x01", "name: wrong wire type for a string"),  # a varint where a string goes
        (b"\x0a\x02\xff\xfe", "name: not valid UTF-8"),
        (b"\x0a\x05ab", "name: truncated"),  # a string cut short
        (b"\x28" + b"\xff" * 11, "limit: a varint longer than 10 bytes"),
        (b"\x0b", "name: wire type 3 (groups are not proto3)"),
        (b"\x28\x05\x28", "limit: truncated"),  # a field with no value
        (b"\x28\x80\x80\x80\x80\x10", "limit: 4294967296 is out of range for an int32"),
    ],
)
async def test_malformed_requests_are_invalid_argument(
    marveld: Running, data: bytes, expected: str
) -> None:
    error = await status_of(marveld, raw_call(LIST, data))
    assert error.status is Status.INVALID_ARGUMENT
    assert error.message == f"the request is not a valid ListCharactersRequest: {expected}"


async def test_unknown_fields_are_ignored(marveld: Running) -> None:
    # Field 99 (a varint) is unknown to LoginRequest: allowed, as protobuf allows it.
    error = await status_of(marveld, raw_call(LOGIN, b"\x98\x06\x01"))
    assert error.status is Status.UNAUTHENTICATED


async def test_a_call_without_a_message_or_with_a_compressed_one(marveld: Running) -> None:
    # A client-streaming call, as far as the client knows: it may end without a message.
    async def no_message(channel: Channel) -> object:
        async with channel.request(
            LOGIN, Cardinality.STREAM_UNARY, Raw, Raw, timeout=TIMEOUT
        ) as stream:
            await stream.send_request(end=True)
            return await stream.recv_message()

    error = await status_of(marveld, no_message)
    assert error.status is Status.INVALID_ARGUMENT
    assert error.message == "the call carries no request message"

    def framed(prefix: bytes) -> object:
        async def go(channel: Channel) -> object:
            async with channel.request(
                LOGIN, Cardinality.STREAM_UNARY, Raw, Raw, timeout=TIMEOUT
            ) as stream:
                await stream.send_request()
                # grpclib's client has no public way to send bad framing: its h2 stream does.
                await stream._stream.send_data(prefix, end_stream=True)
                return await stream.recv_message()

        return go

    compressed = await status_of(marveld, framed(b"\x01\x00\x00\x00\x00"))
    assert compressed.status is Status.UNIMPLEMENTED
    # The body cut short, missing altogether (grpclib's buffer then reads b"", which decoded
    # as an empty request), or the stream ending inside the 5-byte prefix.
    for cut in (b"\x00\x00\x00\x00\x09abc", b"\x00\x00\x00\x00\x09", b"\x00\x00"):
        truncated = await status_of(marveld, framed(cut))
        assert truncated.status is Status.INVALID_ARGUMENT
        assert truncated.message == "the request message is truncated"


@pytest.mark.parametrize(
    ("seconds", "trailer"), [(0.0, 1), (0.2, 1), (1.0, 1), (1.5, 2), (3.0, 3), (179.9999, 180)]
)
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, trailer: int) -> None:
    error = wire.rate_limited("slow down", seconds)
    assert error.status is Status.RESOURCE_EXHAUSTED
    assert wire.retry_after_seconds(error) == trailer
    (info,) = error.details
    assert info.retry_delay.ToTimedelta().total_seconds() == pytest.approx(seconds, abs=1e-6)


def test_errors_without_retry_info_have_no_retry_after() -> None:
    assert wire.retry_after_seconds(GRPCError(Status.NOT_FOUND, "no")) is None
    assert wire.retry_after_seconds(GRPCError(Status.UNAVAILABLE, "no", ["other"])) is None
