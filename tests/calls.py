"""Calls the tests make again and again: an account and a token, a status to expect."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError

from marveld.proto.marvel import v1 as pb
from tests.conftest import Running

TIMEOUT = 10
PASSWORD = "correct horse battery"


async def register_and_login(m: Running, email: str = "peter@example.com") -> dict[str, str]:
    async def go(channel: Channel) -> str:
        auth = pb.AuthServiceStub(channel)
        await auth.register(
            pb.RegisterRequest(name="Peter", email=email, password=PASSWORD), timeout=TIMEOUT
        )
        reply = await auth.login(pb.LoginRequest(email=email, password=PASSWORD), timeout=TIMEOUT)
        return str(reply.access_token)

    token = await m.client.call(go)
    return {"authorization": f"Bearer {token}"}


async def status_of(m: Running, call: object) -> GRPCError:
    with pytest.raises(GRPCError) as info:
        await m.client.call(call)  # type: ignore[arg-type]
    return info.value


async def list_characters(m: Running, auth: dict[str, str], **fields: object) -> pb.CharacterPage:
    async def go(channel: Channel) -> pb.CharacterPage:
        return await pb.CharacterServiceStub(channel).list_characters(
            pb.ListCharactersRequest(**fields), metadata=auth, timeout=TIMEOUT
        )

    return await m.client.call(go)


class Raw:
    """A "message" that is just bytes: lets a test put anything on the wire."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data

    @classmethod
    def FromString(cls, data: bytes) -> Raw:
        return cls(data)


def raw_call(
    path: str, data: bytes, metadata: dict[str, str] | None = None
) -> Callable[[Channel], Awaitable[Raw | None]]:
    """A call to ``path`` (``/marvel.v1.AuthService/Login``) whose request is ``data``."""

    async def go(channel: Channel) -> Raw | None:
        async with channel.request(
            path, Cardinality.UNARY_UNARY, Raw, Raw, timeout=TIMEOUT, metadata=metadata
        ) as stream:
            await stream.send_message(Raw(data), end=True)
            return await stream.recv_message()

    return go


def refusal_of(
    path: str, request: object, reply_type: type, metadata: dict[str, str] | None = None
) -> Callable[[Channel], Awaitable[tuple[GRPCError, dict[str, str]]]]:
    """A call returning (the GRPCError, the trailing metadata), to read a refusal's trailers."""

    async def go(channel: Channel) -> tuple[GRPCError, dict[str, str]]:
        stream: Any
        async with channel.request(
            path, Cardinality.UNARY_UNARY, type(request), reply_type, timeout=TIMEOUT,
            metadata=metadata,
        ) as stream:  # fmt: skip
            await stream.send_message(request, end=True)
            try:
                await stream.recv_message()
            except GRPCError as error:
                return error, {str(k): str(v) for k, v in (stream.trailing_metadata or {}).items()}
        raise AssertionError(f"{path} succeeded")

    return go


def login(email: str, password: str = PASSWORD) -> Callable[[Channel], Awaitable[pb.LoginResponse]]:
    async def go(channel: Channel) -> pb.LoginResponse:
        return await pb.AuthServiceStub(channel).login(
            pb.LoginRequest(email=email, password=password), timeout=TIMEOUT
        )

    return go


def register(
    email: str, password: str = PASSWORD, name: str = "Someone"
) -> Callable[[Channel], Awaitable[pb.UserProfile]]:
    async def go(channel: Channel) -> pb.UserProfile:
        return await pb.AuthServiceStub(channel).register(
            pb.RegisterRequest(name=name, email=email, password=password), timeout=TIMEOUT
        )

    return go


def my_profile(auth: dict[str, str] | None) -> Callable[[Channel], Awaitable[pb.UserProfile]]:
    async def go(channel: Channel) -> pb.UserProfile:
        return await pb.UserServiceStub(channel).get_my_profile(
            pb.GetMyProfileRequest(), metadata=auth, timeout=TIMEOUT
        )

    return go
