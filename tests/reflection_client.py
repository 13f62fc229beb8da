"""A grpcio client that learns marveld's API through server reflection alone.

Run in its own process by tests/test_reflection.py (grpcio's and grpclib's reflection
descriptors cannot share one process): ``python tests/reflection_client.py PORT`` prints the
answers as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.json_format import MessageToDict
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

TIMEOUT = 10


class ReflectingClient:
    """Calls any method by name, with message types found through reflection."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self.database = ProtoReflectionDescriptorDatabase(channel)
        self._pool = DescriptorPool(self.database)

    def call(
        self, service: str, method: str, metadata: tuple[tuple[str, str], ...] = (), **fields: Any
    ) -> dict[str, Any]:
        descriptor = self._pool.FindServiceByName(service).methods_by_name[method]
        request_type = GetMessageClass(descriptor.input_type)
        reply_type = GetMessageClass(descriptor.output_type)
        rpc = self._channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=reply_type.FromString,
        )
        reply = rpc(request_type(**fields), metadata=metadata, timeout=TIMEOUT)
        return dict(MessageToDict(reply, preserving_proto_field_name=True))


def walk_the_contract(port: int) -> dict[str, Any]:
    """register → login → GetMyProfile → ListCharacters(Spider) twice → GetCharacter(1009610)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = ReflectingClient(channel)
        services = set(client.database.get_services())
        email, password = "ned@example.com", "a long enough password"
        client.call("marvel.v1.AuthService", "Register", name="Ned", email=email, password=password)
        login = client.call("marvel.v1.AuthService", "Login", email=email, password=password)
        auth = (("authorization", f"Bearer {login['access_token']}"),)
        me = client.call("marvel.v1.UserService", "GetMyProfile", auth)
        first = client.call(
            "marvel.v1.CharacterService", "ListCharacters", auth, name_starts_with="Spider"
        )
        second = client.call(
            "marvel.v1.CharacterService", "ListCharacters", auth, name_starts_with="Spider"
        )
        spider_man = client.call("marvel.v1.CharacterService", "GetCharacter", auth, id=1009610)
        health_file = client.database.FindFileContainingSymbol("grpc.health.v1.Health")
    return {
        "services": services,
        "login": login,
        "me": me,
        "first": first,
        "second": second,
        "spider_man": spider_man,
        "health_file": health_file.name,
    }


if __name__ == "__main__":
    answers = walk_the_contract(int(sys.argv[1]))
    answers["services"] = sorted(answers["services"])
    print(json.dumps(answers))
