"""Access tokens against a running daemon: forged, tampered, expired, foreign and rotated-out
tokens are UNAUTHENTICATED; tokens of the signing key and of a previous key are accepted;
a deleted user's token and password stop working."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from grpclib.const import Status
from jwt.warnings import InsecureKeyLengthWarning

from marveld.services.security import MAX_TOKEN_BYTES, key_id
from marveld.services.users import SESSION_SECONDS
from marveld.sim import SimHandle
from tests.aio import grpc_client
from tests.calls import PASSWORD, login, my_profile, register_and_login, status_of
from tests.conftest import JWT_SECRET, Clock, Running, make_settings, start_daemon
from tests.stores import open_store

pytestmark = pytest.mark.both_backends  # the service tests run on SQLite and PostgreSQL

PREVIOUS = "the-previous-signing-key-still-accepted-for-a-while"
RETIRED = "a-retired-signing-key-no-longer-in-the-settings!!"
OTHER = "somebody-elses-key-of-at-least-thirty-two-bytes"


@pytest.fixture
async def rotated(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> AsyncIterator[Running]:
    """A daemon signing with JWT_SECRET that still accepts PREVIOUS."""
    settings = make_settings(tmp_path, sim.url, MARVELD_JWT_PREVIOUS_SECRETS=PREVIOUS, **database)
    endpoints = await start_daemon(nursery, settings, clock)
    async with grpc_client(endpoints.grpc_port) as client:
        yield Running(settings, endpoints, sim, client)


def claims(subject: str, now: int, **changes: Any) -> dict[str, Any]:
    base = {"sub": subject, "iss": "marveld", "aud": "marveld", "iat": now, "nbf": now,
            "exp": now + 600, "jti": "a-token-id"}  # fmt: skip
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed(payload: dict[str, Any], key: str = JWT_SECRET, **header: Any) -> str:
    headers = {"kid": key_id(key), "typ": "at+jwt", **header}
    algorithm = headers.pop("alg", "HS256")
    with warnings.catch_warnings():  # PyJWT wants 64-byte keys for HS512: beside the point
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def by_hand(header: dict[str, Any], payload: dict[str, Any], key: str = JWT_SECRET) -> str:
    """A JWT built without PyJWT, which refuses to make some malformed ones."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    mac = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def forgeries(sub: str, victim: str, now: int, good: str) -> dict[str, str]:
    header, payload, signature = good.split(".")
    ok = claims(sub, now)
    return {
        "alg none": jwt.encode(ok, None, algorithm="none", headers={"kid": key_id(JWT_SECRET)}),
        "alg none, signature kept": f"{b64({'alg': 'none', 'kid': key_id(JWT_SECRET)})}"
        f".{payload}.{signature}",
        "alg HS512 with our key": signed(ok, alg="HS512"),
        "wrong key under our kid": jwt.encode(
            ok, OTHER, algorithm="HS256", headers={"kid": key_id(JWT_SECRET), "typ": "at+jwt"}
        ),
        "payload swapped for another user": f"{header}.{b64(claims(victim, now))}.{signature}",
        "signature tampered": f"{header}.{payload}.{signature[:-4]}AAAA",
        "signature removed": f"{header}.{payload}.",
        "expired": signed(claims(sub, now, iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
        "not yet valid": signed(claims(sub, now, nbf=now + 3600)),
        "wrong audience": signed(claims(sub, now, aud="another-service")),
        "wrong issuer": signed(claims(sub, now, iss="someone-else")),
        "no jti": signed(claims(sub, now, jti=None)),
        "no exp": signed(claims(sub, now, exp=None)),
        "no sub": signed(claims(sub, now, sub=None)),
        "unknown kid": signed(ok, kid="0123456789abcdef"),
        "kid not a string": by_hand({"alg": "HS256", "kid": ["a"], "typ": "at+jwt"}, ok),
        "no kid": jwt.encode(ok, JWT_SECRET, algorithm="HS256", headers={"typ": "at+jwt"}),
        "not an access token (typ)": signed(ok, typ="JWT"),
        "signed with a retired key": signed(ok, RETIRED),
        "user that never existed": signed(claims("no-such-user", now)),
        "far too long": signed(claims(sub, now, pad="x" * MAX_TOKEN_BYTES)),
        "not a JWT": "not-a-jwt",
        "header not JSON": f"{base64.urlsafe_b64encode(b'[1]').decode()}.{payload}.{signature}",
    }


async def profile_id(m: Running, auth: dict[str, str]) -> str:
    return str((await m.client.call(my_profile(auth))).id)


async def test_forged_and_foreign_tokens_are_refused(rotated: Running, clock: Clock) -> None:
    auth = await register_and_login(rotated, "peter@example.com")
    sub = await profile_id(rotated, auth)
    victim = await profile_id(rotated, await register_and_login(rotated, "mj@example.com"))
    good = auth["authorization"].removeprefix("Bearer ")
    for name, token in forgeries(sub, victim, int(clock().timestamp()), good).items():
        error = await status_of(rotated, my_profile({"authorization": f"Bearer {token}"}))
        assert error.status is Status.UNAUTHENTICATED, name
        assert token not in (error.message or ""), name


async def test_tokens_of_the_signing_key_and_of_a_previous_key_are_accepted(
    rotated: Running, clock: Clock
) -> None:
    sub = await profile_id(rotated, await register_and_login(rotated))
    now = int(clock().timestamp())
    for key in (JWT_SECRET, PREVIOUS):
        token = signed(claims(sub, now), key)
        assert await profile_id(rotated, {"authorization": f"Bearer {token}"}) == sub


async def test_the_daemon_signs_with_a_kid_naming_its_key(rotated: Running) -> None:
    token = (await register_and_login(rotated))["authorization"].removeprefix("Bearer ")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "kid": key_id(JWT_SECRET), "typ": "at+jwt"}
    assert JWT_SECRET not in token


async def test_tokens_expire_by_the_daemons_clock(rotated: Running, clock: Clock) -> None:
    auth = await register_and_login(rotated)
    clock.advance(3600 + 60)
    error = await status_of(rotated, my_profile(auth))
    assert error.status is Status.UNAUTHENTICATED
    assert error.message == "access token expired; log in again"


async def test_a_deleted_user_can_neither_use_a_token_nor_log_in(
    rotated: Running, clock: Clock
) -> None:
    auth = await register_and_login(rotated, "gone@example.com")
    user_id = await profile_id(rotated, auth)
    async with open_store(rotated.settings) as store:
        await store.users.soft_delete(user_id, clock())
    # A token checked moments ago is trusted for SESSION_SECONDS without reading the account.
    clock.advance(SESSION_SECONDS)
    refused = await status_of(rotated, my_profile(auth))
    assert refused.status is Status.UNAUTHENTICATED
    assert refused.message == "the account behind this token no longer exists"
    deleted = await status_of(rotated, login("gone@example.com", PASSWORD))
    unknown = await status_of(rotated, login("never@example.com", PASSWORD))
    assert deleted.status is unknown.status is Status.UNAUTHENTICATED
    assert deleted.message == unknown.message
