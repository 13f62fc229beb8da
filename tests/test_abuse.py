"""Rate limits and brute force against a running daemon with tight limits: refusals are
RESOURCE_EXHAUSTED with a retry-after trailer and a RetryInfo detail, and time (the Clock
fixture, never a sleep) lets callers back in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from google.rpc.error_details_pb2 import RetryInfo
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from tests.aio import grpc_client
from tests.calls import (
    PASSWORD,
    login,
    my_profile,
    refusal_of,
    register,
    register_and_login,
    status_of,
)
from tests.conftest import Clock, Running, make_settings, start_daemon

WRONG = "not the password at all"
TIGHT = {
    "MARVELD_RATELIMIT_USER_RATE": "1",
    "MARVELD_RATELIMIT_USER_BURST": "3",
    "MARVELD_RATELIMIT_ANONYMOUS_RATE": "1",
    "MARVELD_RATELIMIT_ANONYMOUS_BURST": "1000",
    "MARVELD_RATELIMIT_LOGIN_FAILURES": "3",
    "MARVELD_RATELIMIT_ADDRESS_LOGIN_FAILURES": "6",
    "MARVELD_RATELIMIT_LOGIN_WINDOW": "15m",
}


async def running(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, **env: str
) -> Any:
    settings = make_settings(tmp_path, sim.url, **{**TIGHT, **env})
    endpoints = await start_daemon(nursery, settings, clock)
    return settings, endpoints


@pytest.fixture
async def tight(nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock) -> Any:
    settings, endpoints = await running(nursery, sim, tmp_path, clock)
    async with grpc_client(endpoints.grpc_port) as client:
        yield Running(settings, endpoints, sim, client)


def retry_delay(details: Any) -> float:
    (info,) = details
    assert isinstance(info, RetryInfo)
    return float(info.retry_delay.ToTimedelta().total_seconds())


async def test_each_user_has_a_rate_limit_with_a_retry_hint(tight: Running, clock: Clock) -> None:
    alice = await register_and_login(tight, "alice@example.com")
    bob = await register_and_login(tight, "bob@example.com")
    for _ in range(3):  # the burst
        await tight.client.call(my_profile(alice))
    path = "/marvel.v1.UserService/GetMyProfile"
    error, trailers = await tight.client.call(
        refusal_of(path, pb.GetMyProfileRequest(), pb.UserProfile, alice)
    )
    assert error.status is Status.RESOURCE_EXHAUSTED
    assert error.message == "too many requests; retry after 1 s"
    assert trailers["retry-after"] == "1"
    assert retry_delay(error.details) == pytest.approx(1.0)
    # The character API is limited by the same bucket, and Bob by his own.
    refused = await status_of(tight, _list(alice))
    assert refused.status is Status.RESOURCE_EXHAUSTED
    await tight.client.call(my_profile(bob))
    clock.advance(1)
    await tight.client.call(my_profile(alice))


def _list(auth: dict[str, str]) -> Callable[[Any], Awaitable[object]]:
    async def go(channel: Any) -> object:
        return await pb.CharacterServiceStub(channel).list_characters(
            pb.ListCharactersRequest(), metadata=auth, timeout=10
        )

    return go


async def test_unauthenticated_calls_are_limited_per_address(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock
) -> None:
    settings, endpoints = await running(
        nursery, sim, tmp_path, clock, MARVELD_RATELIMIT_ANONYMOUS_BURST="3"
    )
    async with grpc_client(endpoints.grpc_port) as client:
        m = Running(settings, endpoints, sim, client)
        await client.call(register("carol@example.com"))
        await client.call(login("carol@example.com"))
        await client.call(login("carol@example.com"))
        request = pb.RegisterRequest(name="D", email="dave@example.com", password=PASSWORD)
        error, trailers = await client.call(
            refusal_of("/marvel.v1.AuthService/Register", request, pb.UserProfile)
        )
        assert error.status is Status.RESOURCE_EXHAUSTED
        assert error.message == "too many requests from this address; retry after 1 s"
        assert trailers["retry-after"] == "1"
        clock.advance(1)
        await client.call(register("dave@example.com"))
        assert (await status_of(m, login("dave@example.com"))).status is (Status.RESOURCE_EXHAUSTED)


async def test_brute_force_on_one_account_is_throttled_known_or_not(
    tight: Running, clock: Clock
) -> None:
    await tight.client.call(register("victim@example.com"))
    await tight.client.call(register("bystander@example.com"))
    refusals = {}
    for email in ("victim@example.com", "nobody@example.com"):
        for _ in range(3):
            wrong = await status_of(tight, login(email, WRONG))
            assert wrong.status is Status.UNAUTHENTICATED
        # Now even the right password is refused, before it is checked.
        error, trailers = await tight.client.call(
            refusal_of(
                "/marvel.v1.AuthService/Login",
                pb.LoginRequest(email=email, password=PASSWORD),
                pb.LoginResponse,
            )
        )
        assert error.status is Status.RESOURCE_EXHAUSTED
        assert trailers["retry-after"] == "300"  # 15 minutes / 3 failures
        assert retry_delay(error.details) == pytest.approx(300)
        refusals[email] = error.message
    # An unknown email is throttled exactly like a known one: no way to tell them apart.
    assert refusals["victim@example.com"] == refusals["nobody@example.com"]
    assert refusals["victim@example.com"] == "too many failed logins; retry after 300 s"
    # The address has 6 failures now: its limit. Time lets one more attempt in.
    clock.advance(300)
    assert (await tight.client.call(login("victim@example.com"))).access_token


async def test_password_spraying_from_one_address_is_throttled(tight: Running) -> None:
    await tight.client.call(register("target@example.com"))
    for i in range(6):  # two guesses each at three accounts: no account reaches its limit
        error = await status_of(tight, login(f"user{i // 2}@example.com", WRONG))
        assert error.status is Status.UNAUTHENTICATED
    refused = await status_of(tight, login("target@example.com"))
    assert refused.status is Status.RESOURCE_EXHAUSTED
    assert refused.message == "too many failed logins; retry after 150 s"  # 15 min / 6


async def test_a_successful_login_starts_the_count_over(tight: Running) -> None:
    await tight.client.call(register("typo@example.com"))
    for _ in range(2):
        for _ in range(2):
            assert (await status_of(tight, login("typo@example.com", WRONG))).status is (
                Status.UNAUTHENTICATED
            )
        assert (await tight.client.call(login("typo@example.com"))).access_token


async def test_limits_can_be_turned_off(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock
) -> None:
    settings, endpoints = await running(
        nursery, sim, tmp_path, clock, MARVELD_RATELIMIT_ENABLED="false"
    )
    async with grpc_client(endpoints.grpc_port) as client:
        m = Running(settings, endpoints, sim, client)
        auth = await register_and_login(m)
        for _ in range(10):
            await client.call(my_profile(auth))
        for _ in range(10):
            assert (await status_of(m, login("peter@example.com", WRONG))).status is (
                Status.UNAUTHENTICATED
            )


async def test_concurrent_guesses_cannot_slip_past_the_throttle(tight: Running) -> None:
    await tight.client.call(register("target@example.com"))

    async def guesses(channel: Channel) -> list[Status]:
        stub = pb.AuthServiceStub(channel)
        request = pb.LoginRequest(email="target@example.com", password=WRONG)
        answers = await asyncio.gather(
            *(stub.login(request, timeout=10) for _ in range(12)), return_exceptions=True
        )
        assert all(isinstance(answer, GRPCError) for answer in answers)
        return [answer.status for answer in answers if isinstance(answer, GRPCError)]

    statuses = await tight.client.call(guesses)
    # Each attempt counts before its password check, so however the 12 interleave, only
    # 3 reach it (counting failures afterwards would let all 12 through).
    assert statuses.count(Status.UNAUTHENTICATED) == 3
    assert statuses.count(Status.RESOURCE_EXHAUSTED) == 9


async def test_cached_answers_count_against_the_limit_too(tight: Running, clock: Clock) -> None:
    """Hits are answered on the fast path, without entering trio; the limit still holds."""
    alice = await register_and_login(tight, "carol@example.com")
    await tight.client.call(_list(alice))  # a miss, then hits from the memory tier
    await tight.client.call(_list(alice))
    await tight.client.call(_list(alice))
    refused = await status_of(tight, _list(alice))
    assert refused.status is Status.RESOURCE_EXHAUSTED
    clock.advance(1)
    await tight.client.call(_list(alice))


async def test_a_call_the_fast_path_cannot_answer_costs_one_request_not_two(
    tight: Running,
) -> None:
    """A cache miss, an unknown id or a bad request after a recent check of the token: the
    fast path took one request, then the slow path checked the token again. The burst is 3,
    so with two charges each the third call here would be refused."""
    alice = await register_and_login(tight, "alice@example.com")
    await tight.client.call(my_profile(alice))  # the token is checked: fast paths apply

    async def miss(channel: Any) -> object:
        return await pb.CharacterServiceStub(channel).list_characters(
            pb.ListCharactersRequest(name_starts_with="Spi"), metadata=alice, timeout=10
        )

    async def unknown(channel: Any) -> object:
        return await pb.CharacterServiceStub(channel).get_character(
            pb.GetCharacterRequest(id=1), metadata=alice, timeout=10
        )

    await tight.client.call(miss)
    assert (await status_of(tight, unknown)).status is Status.NOT_FOUND
    # The burst (3) is spent now, and only now.
    assert (await status_of(tight, _list(alice))).status is Status.RESOURCE_EXHAUSTED
