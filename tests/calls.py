"""Calls the tests make again and again: an account and a token, a status to expect."""

from __future__ import annotations

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


def raw_call(path: str, data: bytes, metadata: dict[str, str] | None = None) -> object:
    """A call to ``path`` (``/marvel.v1.AuthService/Login``) whose request is ``data``."""

    async def go(channel: Channel) -> Raw | None:
        async with channel.request(
            path, Cardinality.UNARY_UNARY, Raw, Raw, timeout=TIMEOUT, metadata=metadata
        ) as stream:
            await stream.send_message(Raw(data), end=True)
            return await stream.recv_message()

    return go
