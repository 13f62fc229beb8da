"""Accounts and tokens through the real store, on both backends (the ``store`` fixture):
hashing, rehashing, expiry, tampering."""

from __future__ import annotations

import jwt
import pytest

from marveld.domain.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from marveld.services.security import ARGON2_MEMORY_KIB, PasswordHasher, TokenIssuer, key_id
from marveld.services.users import UserService
from marveld.storage import Store
from tests.conftest import FAST_HASHER, JWT_SECRET, Clock

PASSWORD = "a long enough password"
PEER = "203.0.113.1"


def service(store: Store, clock: Clock, hasher: PasswordHasher = FAST_HASHER) -> UserService:
    tokens = TokenIssuer(JWT_SECRET, issuer="marveld", ttl_seconds=3600)
    return UserService(store, hasher, tokens, clock)


async def test_passwords_are_stored_as_argon2id_at_owasp_parameters(
    store: Store, clock: Clock
) -> None:
    users = service(store, clock, PasswordHasher())
    user = await users.register(
        name="Wanda", email="wanda@example.com", password=PASSWORD, peer=PEER
    )
    assert user.password_hash.startswith(f"$argon2id$v=19$m={ARGON2_MEMORY_KIB},t=2,p=1$")
    assert PASSWORD not in user.password_hash
    token = await users.login(email="WANDA@example.com", password=PASSWORD, peer=PEER)
    assert (await users.authenticate(f"Bearer {token.token}")).id == user.id


async def test_login_rehashes_when_the_parameters_change(store: Store, clock: Clock) -> None:
    old = PasswordHasher(memory_kib=512, time_cost=1)
    user = await service(store, clock, old).register(
        name="Vision", email="vision@example.com", password=PASSWORD, peer=PEER
    )
    await service(store, clock).login(email="vision@example.com", password=PASSWORD, peer=PEER)
    stored = await store.users.by_email("vision@example.com")
    assert stored is not None
    assert stored.password_hash != user.password_hash
    assert not FAST_HASHER.needs_rehash(stored.password_hash)


async def test_register_refuses_taken_emails_and_bad_fields(store: Store, clock: Clock) -> None:
    users = service(store, clock)
    await users.register(name="Sam", email="sam@example.com", password=PASSWORD, peer=PEER)
    with pytest.raises(AlreadyExists):
        await users.register(name="Sam 2", email=" SAM@example.com", password=PASSWORD, peer=PEER)
    with pytest.raises(InvalidArgument, match=r"^password:"):
        await users.register(name="Sam", email="sam2@example.com", password="short", peer=PEER)
    assert (await store.users.by_email("sam2@example.com")) is None


async def test_a_malformed_email_at_login_is_just_a_failed_login(
    store: Store, clock: Clock
) -> None:
    with pytest.raises(Unauthenticated, match="wrong email or password"):
        await service(store, clock).login(email="not an email", password=PASSWORD, peer=PEER)


async def test_tokens_expire_by_the_clock(store: Store, clock: Clock) -> None:
    users = service(store, clock)
    await users.register(name="Kate", email="kate@example.com", password=PASSWORD, peer=PEER)
    token = await users.login(email="kate@example.com", password=PASSWORD, peer=PEER)
    clock.advance(3600 + 60)
    with pytest.raises(Unauthenticated, match="expired"):
        await users.authenticate(f"Bearer {token.token}")


async def test_require_admin_follows_the_role_in_the_database(store: Store, clock: Clock) -> None:
    users = service(store, clock)
    await users.register(name="Nick", email="nick@example.com", password=PASSWORD, peer=PEER)
    token = await users.login(email="nick@example.com", password=PASSWORD, peer=PEER)
    bearer = f"Bearer {token.token}"
    with pytest.raises(PermissionDenied, match="needs an admin account"):
        users.require_admin(await users.authenticate(bearer))
    admin = await store.users.set_role("NICK@example.com", "admin", clock())
    assert admin.role == "admin"
    # The same token: admin calls read the role afresh, it is not carried in the token.
    assert users.require_admin(await users.authenticate(bearer, fresh=True)).id == admin.id
    await store.users.set_role("nick@example.com", "user", clock())
    with pytest.raises(PermissionDenied):
        users.require_admin(await users.authenticate(bearer, fresh=True))


async def test_set_role_and_soft_delete_refuse_what_is_not_there(
    store: Store, clock: Clock
) -> None:
    users = service(store, clock)
    user = await users.register(
        name="Maria", email="maria@example.com", password=PASSWORD, peer=PEER
    )
    with pytest.raises(InvalidArgument, match=r"^role: must be one of user, admin$"):
        await store.users.set_role("maria@example.com", "root", clock())
    with pytest.raises(NotFound):
        await store.users.set_role("nobody@example.com", "admin", clock())
    await store.users.soft_delete(user.id, clock())
    with pytest.raises(NotFound):
        await store.users.soft_delete(user.id, clock())
    with pytest.raises(NotFound):  # a deleted user cannot be made an admin
        await store.users.set_role("maria@example.com", "admin", clock())
    with pytest.raises(Unauthenticated, match="wrong email or password"):
        await users.login(email="maria@example.com", password=PASSWORD, peer=PEER)


def test_tokens_name_their_key_and_previous_keys_still_verify(clock: Clock) -> None:
    old = TokenIssuer(OLD_SECRET, issuer="marveld", ttl_seconds=600)
    new = TokenIssuer(JWT_SECRET, issuer="marveld", ttl_seconds=600, previous_secrets=[OLD_SECRET])
    assert old.signing_key_id == key_id(OLD_SECRET) != new.signing_key_id == key_id(JWT_SECRET)
    assert new.verifying_key_ids == sorted([key_id(OLD_SECRET), key_id(JWT_SECRET)])
    token = old.issue("user-1", clock())
    assert jwt.get_unverified_header(token.token)["kid"] == key_id(OLD_SECRET)
    assert new.verify(token.token, clock()).subject == "user-1"
    retired = TokenIssuer(JWT_SECRET, issuer="marveld", ttl_seconds=600)
    with pytest.raises(Unauthenticated, match="unknown key"):
        retired.verify(token.token, clock())
    assert OLD_SECRET not in key_id(OLD_SECRET)
    assert len(key_id(OLD_SECRET)) == 16


OLD_SECRET = "an-old-signing-key-of-at-least-32-bytes"


async def test_an_email_stored_in_mixed_case_is_found_and_taken_in_any_case(
    store: Store, clock: Clock
) -> None:
    # The services store emails lower-cased; the store itself folds case anyway.
    user = await store.users.create(
        name="Mixed", email="Mixed@Example.COM", password_hash="h", now=clock()
    )
    assert await store.users.by_email("mixed@example.com") == user
    assert (await store.users.set_role("MIXED@example.com", "admin", clock())).id == user.id
    with pytest.raises(AlreadyExists, match="email is already registered"):
        await store.users.create(
            name="Other", email="mixed@example.com", password_hash="h", now=clock()
        )
    found = await store.users.by_id(user.id)
    assert found is not None
    assert (found.email, found.role) == ("Mixed@Example.COM", "admin")
