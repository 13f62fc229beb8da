"""Secrets, passwords and tokens never reach a log line, an error message or a metric.

Every log record of a full session against a running daemon (root logger at DEBUG, so every
library's records too, from start-up to shutdown) is formatted and searched for each
secret value the test knows."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import trio
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from tests.aio import grpc_client
from tests.calls import TIMEOUT, login, my_profile, register
from tests.conftest import JWT_SECRET, PRIVATE_KEY, Clock, make_settings, start_daemon

PASSWORD = "my very own secret passphrase"
WRONG_PASSWORD = "a wrong but secret guess"
PREVIOUS_JWT = "previous-jwt-secret-also-never-to-be-logged"
WEBHOOK = "webhook-secret-never-to-be-logged"


async def test_no_secret_in_any_log_error_or_metric(
    nursery: trio.Nursery,
    sim: SimHandle,
    tmp_path: Path,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(
        tmp_path,
        sim.url,
        MARVELD_LOG_LEVEL="debug",
        MARVELD_JWT_PREVIOUS_SECRETS=PREVIOUS_JWT,
        MARVELD_WEBHOOK_SECRET=WEBHOOK,
    )
    errors: list[str] = []
    async with trio.open_nursery() as daemon:
        endpoints = await start_daemon(daemon, settings, clock)
        async with grpc_client(endpoints.grpc_port) as client:
            await client.call(register("peter@example.com", PASSWORD))
            token = (await client.call(login("peter@example.com", PASSWORD))).access_token
            auth = {"authorization": f"Bearer {token}"}
            await client.call(my_profile(auth))

            async def browse(channel: Channel) -> None:
                characters = pb.CharacterServiceStub(channel)
                await characters.list_characters(
                    pb.ListCharactersRequest(name_starts_with="Spider"), metadata=auth,
                    timeout=TIMEOUT,
                )  # fmt: skip
                await characters.search_characters(
                    pb.SearchCharactersRequest(query="hulk"), metadata=auth, timeout=TIMEOUT
                )
                await characters.get_character(
                    pb.GetCharacterRequest(id=1009610), metadata=auth, timeout=TIMEOUT
                )

            await client.call(browse)
            for call in (
                login("peter@example.com", WRONG_PASSWORD),
                register("peter@example.com", PASSWORD),  # taken
                register("mary@example.com", WRONG_PASSWORD[:5]),  # too short
                my_profile({"authorization": f"Bearer {token}x"}),  # tampered
                my_profile({"authorization": f"Basic {token}"}),
            ):
                try:
                    await client.call(call)
                except GRPCError as exc:
                    errors.append(f"{exc.status} {exc.message} {exc.details}")
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"http://127.0.0.1:{endpoints.http_port}/metrics")).text
        daemon.cancel_scope.cancel()

    secrets = {
        "password": PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "access token": token,
        "token signature": token.rsplit(".", 1)[1],
        "JWT secret": JWT_SECRET,
        "previous JWT secret": PREVIOUS_JWT,
        "webhook secret": WEBHOOK,
        "Marvel private key": PRIVATE_KEY,
    }
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    lines = [formatter.format(record) for record in caplog.records]
    assert len(lines) > 20  # the capture really saw the session
    assert any(line.startswith("marveld.daemon INFO marveld ready") for line in lines)
    for what, value in secrets.items():
        for line in lines:
            assert value not in line, f"{what} in a log line: {line[:200]}"
        for error in errors:
            assert value not in error, f"{what} in an error: {error[:200]}"
        assert value not in metrics, f"{what} in /metrics"
