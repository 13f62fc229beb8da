"""Accounts and tokens through the real store: hashing, rehashing, expiry, tampering."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from marveld.domain.errors import AlreadyExists, InvalidArgument, Unauthenticated
from marveld.services.security import ARGON2_MEMORY_KIB, PasswordHasher, TokenIssuer
from marveld.services.users import UserService
from marveld.storage import Store
from tests.conftest import FAST_HASHER, JWT_SECRET, Clock

PASSWORD = "a long enough password"
PEER = "203.0.113.1"


def service(store: Store, clock: Clock, hasher: PasswordHasher = FAST_HASHER) -> UserService:
    tokens = TokenIssuer(JWT_SECRET, issuer="marveld", ttl_seconds=3600)
    return UserService(store, hasher, tokens, clock)


async def test_passwords_are_stored_as_argon2id_at_owasp_parameters(
    tmp_path: Path, clock: Clock
) -> None:
    async with Store.open(tmp_path / "m.db") as store:
        users = service(store, clock, PasswordHasher())
        user = await users.register(
            name="Wanda", email="wanda@example.com", password=PASSWORD, peer=PEER
        )
        assert user.password_hash.startswith(f"$argon2id$v=19$m={ARGON2_MEMORY_KIB},t=2,p=1$")
        assert PASSWORD not in user.password_hash
        token = await users.login(email="WANDA@example.com", password=PASSWORD, peer=PEER)
        assert (await users.authenticate(f"Bearer {token.token}")).id == user.id


async def test_login_rehashes_when_the_parameters_change(tmp_path: Path, clock: Clock) -> None:
    async with Store.open(tmp_path / "m.db") as store:
        old = PasswordHasher(memory_kib=512, time_cost=1)
        user = await service(store, clock, old).register(
            name="Vision", email="vision@example.com", password=PASSWORD, peer=PEER
        )
        await service(store, clock).login(email="vision@example.com", password=PASSWORD, peer=PEER)
        stored = await store.users.by_email("vision@example.com")
        assert stored is not None
        assert stored.password_hash != user.password_hash
        assert not FAST_HASHER.needs_rehash(stored.password_hash)


async def test_register_refuses_taken_emails_and_bad_fields(tmp_path: Path, clock: Clock) -> None:
    async with Store.open(tmp_path / "m.db") as store:
        users = service(store, clock)
        await users.register(name="Sam", email="sam@example.com", password=PASSWORD, peer=PEER)
        with pytest.raises(AlreadyExists):
            await users.register(
                name="Sam 2", email=" SAM@example.com", password=PASSWORD, peer=PEER
            )
        with pytest.raises(InvalidArgument, match=r"^password:"):
            await users.register(name="Sam", email="sam2@example.com", password="short", peer=PEER)
        assert (await store.users.by_email("sam2@example.com")) is None


async def test_a_malformed_email_at_login_is_just_a_failed_login(
    tmp_path: Path, clock: Clock
) -> None:
    async with Store.open(tmp_path / "m.db") as store:
        with pytest.raises(Unauthenticated, match="wrong email or password"):
            await service(store, clock).login(email="not an email", password=PASSWORD, peer=PEER)


async def test_tokens_expire_by_the_clock(tmp_path: Path, clock: Clock) -> None:
    async with Store.open(tmp_path / "m.db") as store:
        users = service(store, clock)
        await users.register(name="Kate", email="kate@example.com", password=PASSWORD, peer=PEER)
        token = await users.login(email="kate@example.com", password=PASSWORD, peer=PEER)
        clock.advance(3600 + 60)
        with pytest.raises(Unauthenticated, match="expired"):
            await users.authenticate(f"Bearer {token.token}")


async def test_forged_and_foreign_tokens_are_refused(tmp_path: Path, clock: Clock) -> None:
    async with Store.open(tmp_path / "m.db") as store:
        users = service(store, clock)
        user = await users.register(
            name="Clint", email="clint@example.com", password=PASSWORD, peer=PEER
        )
        now = int(clock().timestamp())
        claims = {
            "sub": user.id,
            "iss": "marveld",
            "aud": "marveld",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": "x",
        }
        forged = [
            jwt.encode(claims, "another secret of at least thirty-two bytes", algorithm="HS256"),
            jwt.encode({**claims, "aud": "someone-else"}, JWT_SECRET, algorithm="HS256"),
            jwt.encode({**claims, "iss": "someone-else"}, JWT_SECRET, algorithm="HS256"),
            jwt.encode({**claims, "exp": now - 600}, JWT_SECRET, algorithm="HS256"),
            jwt.encode({**claims, "sub": "no-such-user"}, JWT_SECRET, algorithm="HS256"),
            jwt.encode(claims, None, algorithm="none"),
        ]
        for token in forged:
            with pytest.raises(Unauthenticated):
                await users.authenticate(f"Bearer {token}")
        good = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        assert (await users.authenticate(f"bearer   {good}")).id == user.id
