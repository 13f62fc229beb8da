"""Password hashing (argon2id) and access tokens (JWT). The one place that knows
argon2-cffi and PyJWT."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError

from marveld.domain.errors import Unauthenticated

# OWASP's minimum for argon2id: m = 19 MiB, t = 2, p = 1.
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1
ALGORITHM = "HS256"  # the only one accepted: never "none", never an asymmetric one
AUDIENCE = "marveld"
TOKEN_TYPE = "at+jwt"  # RFC 9068's explicit type: no other JWT signed with our key passes
LEEWAY_SECONDS = 10
# Ours are ~300 bytes. A longer token is refused by its size alone, before any parsing,
# with a message that says so, on both ports (UNAUTHENTICATED, 401).
MAX_TOKEN_BYTES = 8192
# The times a token may carry (iat, nbf, exp): 1970 to the start of year 9999, so that every
# one, leeway added, is a datetime (exp = 2**70 was an OverflowError, a 500).
MAX_CLAIM_SECONDS = 253_370_764_800  # 9999-01-01T00:00:00Z
TIME_CLAIMS = ("iat", "nbf", "exp")
MAX_SUBJECT_CHARS = 64  # a user id is a UUID
_NOT_VALID = "access token is not valid"


class PasswordHasher:
    """argon2id with at least OWASP's parameters. Blocking: call it from a worker thread."""

    def __init__(
        self,
        *,
        memory_kib: int = ARGON2_MEMORY_KIB,
        time_cost: int = ARGON2_TIME_COST,
        parallelism: int = ARGON2_PARALLELISM,
    ) -> None:
        self._argon2 = _Argon2(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        # Hashing a throwaway password once gives a real hash to verify against when the
        # email is unknown, so a wrong email costs the same work as a wrong password.
        self._decoy = self._argon2.hash("decoy password, never matches")

    def hash(self, password: str) -> str:
        return self._argon2.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with ``password_hash`` None, the same work, False."""
        try:
            return self._argon2.verify(password_hash or self._decoy, password) and bool(
                password_hash
            )
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._argon2.check_needs_rehash(password_hash)


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    expires_at: datetime
    subject: str


def key_id(secret: str) -> str:
    """The ``kid`` of a signing key: 16 hex digits of a SHA-256 over a label and the key.

    Names the key without showing it; and it tells an attacker nothing the signature of any
    token does not already give them to test guesses against."""
    return hashlib.sha256(b"marveld access token key\x00" + secret.encode()).hexdigest()[:16]


class TokenIssuer:
    """Signs and checks HS256 JWTs carrying exp, iat, nbf, iss, aud, sub and jti.

    ``secret`` signs; ``previous_secrets`` still verify, so a key can be rotated: sign with a
    new key, keep the old one as previous until its last token has expired, then drop it.
    Each token names its key in the ``kid`` header; an unknown kid is refused.
    """

    def __init__(
        self,
        secret: str,
        *,
        issuer: str,
        ttl_seconds: float,
        previous_secrets: Sequence[str] = (),
    ) -> None:
        self._secret = secret
        self._kid = key_id(secret)
        self._keys = {key_id(key): key for key in previous_secrets}
        self._keys[self._kid] = secret
        self._issuer = issuer
        self._ttl = timedelta(seconds=ttl_seconds)

    @property
    def signing_key_id(self) -> str:
        return self._kid

    @property
    def verifying_key_ids(self) -> list[str]:
        """The kids accepted: the signing key's and the previous keys'."""
        return sorted(self._keys)

    def issue(self, subject: str, now: datetime) -> AccessToken:
        expires = now + self._ttl
        claims = {
            "sub": subject,
            "iss": self._issuer,
            "aud": AUDIENCE,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self._kid, "typ": TOKEN_TYPE}
        token = jwt.encode(claims, self._secret, algorithm=ALGORITHM, headers=headers)
        return AccessToken(token=token, expires_at=expires.replace(microsecond=0), subject=subject)

    def verify(self, token: str, now: datetime) -> AccessToken:
        """The checked token (subject: a user id); Unauthenticated when it does not check out.

        Its size is checked first (:data:`MAX_TOKEN_BYTES`); then, signature and standard
        claims checked, that the times are numbers in range and the subject is a short
        ASCII id, so that nothing a token carries can overflow or fail to encode later."""
        check_token_size(token)
        if not token.isascii():  # base64url and dots; anything else is not one of ours
            raise Unauthenticated(_NOT_VALID)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated(_NOT_VALID) from None
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:  # no kid, or a key rotated out: the token cannot be checked
            raise Unauthenticated(f"{_NOT_VALID}: signed with an unknown key; log in again")
        if header.get("typ") != TOKEN_TYPE:
            raise Unauthenticated(_NOT_VALID)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("access token expired; log in again") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated(_NOT_VALID) from None
        _check_claims(claims)
        # PyJWT checks exp against the wall clock; check against the clock we were given too.
        if claims["exp"] + LEEWAY_SECONDS < now.timestamp():
            raise Unauthenticated("access token expired; log in again")
        return AccessToken(
            token=token,
            expires_at=datetime.fromtimestamp(claims["exp"] + LEEWAY_SECONDS, UTC),
            subject=str(claims["sub"]),
        )


def check_token_size(token: str) -> None:
    """Unauthenticated, saying the size and the limit, for a token over MAX_TOKEN_BYTES."""
    size = len(token.encode("utf-8", "surrogatepass"))
    if size > MAX_TOKEN_BYTES:
        raise Unauthenticated(
            f"the bearer token is {size} bytes; at most {MAX_TOKEN_BYTES} are accepted"
        )


def _check_claims(claims: dict[str, Any]) -> None:
    """PyJWT takes any value ``int()`` takes as a time (``"123"``, ``2**70``, ``true``) and
    any string as the subject; ours are numbers from 1970 to 9999 and a short ASCII id."""
    for name in TIME_CLAIMS:
        value = claims[name]
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise Unauthenticated(f"{_NOT_VALID}: {name} is not a number")
        if not 0 <= value <= MAX_CLAIM_SECONDS:  # NaN fails this too
            raise Unauthenticated(f"{_NOT_VALID}: {name} is out of range")
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject.isascii() or len(subject) > MAX_SUBJECT_CHARS:
        raise Unauthenticated(f"{_NOT_VALID}: sub is not a user id")


def utc_now() -> datetime:
    return datetime.now(UTC)
