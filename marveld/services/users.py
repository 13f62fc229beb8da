"""Accounts: register, log in, and turn a bearer token back into a user.

Rate limits are taken here, so every call that authenticates is limited per user, and
Register and Login per client address (``peer``); Login also goes through the throttle of
failed logins.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Collection
from datetime import datetime

import trio

from marveld.domain.errors import InvalidArgument, PermissionDenied, Unauthenticated
from marveld.domain.text import check_unicode
from marveld.domain.users import User, check_name, check_password, normalize_email
from marveld.services.passwords import load_common_passwords
from marveld.services.ratelimit import RateLimits, Throttle
from marveld.services.security import AccessToken, PasswordHasher, TokenIssuer
from marveld.storage import Store

log = logging.getLogger(__name__)

# argon2id takes tens of milliseconds and ~19 MiB a call: bound how many run at once.
HASHING_THREADS = 2
# A checked token is remembered this long (never past its expiry), so most calls need
# neither the signature check nor a database read. A deleted account's tokens stop working
# within this time.
SESSION_SECONDS = 30.0
MAX_SESSIONS = 10_000


class UserService:
    def __init__(
        self,
        store: Store,
        hasher: PasswordHasher,
        tokens: TokenIssuer,
        clock: Callable[[], datetime],
        *,
        limits: RateLimits | None = None,
        throttle: Throttle | None = None,
        common_passwords: Collection[str] | None = None,
    ) -> None:
        """``common_passwords`` are refused at registration; None: the shipped list."""
        self._store = store
        self._hasher = hasher
        self._tokens = tokens
        self._clock = clock
        self._limits = limits or RateLimits()
        self._throttle = throttle
        self._common = load_common_passwords() if common_passwords is None else common_passwords
        self._hashing = trio.CapacityLimiter(HASHING_THREADS)
        self._sessions: OrderedDict[str, tuple[User, float]] = OrderedDict()

    async def register(self, *, name: str, email: str, password: str, peer: str) -> User:
        """A new account; InvalidArgument naming the field, AlreadyExists for a taken email,
        ResourceExhausted when ``peer`` (the client address) calls too often."""
        self._limits.check_address(peer)
        clean_name = check_name(name)
        clean_email = normalize_email(email)
        check_password(password, self._common)
        password_hash = await trio.to_thread.run_sync(
            self._hasher.hash, password, limiter=self._hashing
        )
        user = await self._store.users.create(
            name=clean_name, email=clean_email, password_hash=password_hash, now=self._clock()
        )
        log.info("user %s registered", user.id)
        return user

    async def login(self, *, email: str, password: str, peer: str) -> AccessToken:
        """A bearer token; the same Unauthenticated for a wrong email or a wrong password
        (and a soft-deleted account); ResourceExhausted after too many calls or failures;
        InvalidArgument naming ``password`` when it holds a lone surrogate (it cannot be
        hashed, so it cannot be anyone's password)."""
        self._limits.check_address(peer)
        check_unicode(password, "password")  # argon2 hashes UTF-8, which cannot carry one
        try:
            clean_email = normalize_email(email)
        except InvalidArgument:
            clean_email = ""  # not an address: no account, same answer and same work
        if self._throttle is not None:
            await self._throttle.begin(clean_email or None, peer)
        user = await self._store.users.by_email(clean_email) if clean_email else None
        stored = user.password_hash if user is not None and user.deleted_at is None else None
        ok = await trio.to_thread.run_sync(
            self._hasher.verify, stored, password, limiter=self._hashing
        )
        if not ok or user is None:
            raise Unauthenticated("wrong email or password")
        if self._throttle is not None:
            await self._throttle.succeeded(clean_email, peer)
        if self._hasher.needs_rehash(user.password_hash):
            new_hash = await trio.to_thread.run_sync(
                self._hasher.hash, password, limiter=self._hashing
            )
            await self._store.users.set_password_hash(user.id, new_hash, self._clock())
        return self._tokens.issue(user.id, self._clock())

    async def authenticate(self, authorization: str | None, *, fresh: bool = False) -> User:
        """The user behind an ``authorization: Bearer <token>`` value, charged one request
        against their rate limit (ResourceExhausted when over). ``fresh`` reads the account
        from the database even when the token was checked moments ago (admin calls: roles)."""
        if not fresh and (user := self._session(authorization)) is not None:
            self._limits.check_user(user.id)
            return user
        if not authorization:
            raise Unauthenticated("missing authorization metadata: send 'Bearer <access token>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization must be 'Bearer <access token>'")
        now = self._clock()
        claims = self._tokens.verify(token.strip(), now)
        self._limits.check_user(
            claims.subject
        )  # before the database: a throttled caller costs little
        user = await self._store.users.by_id(claims.subject)
        if user is None or user.deleted_at is not None:
            raise Unauthenticated("the account behind this token no longer exists")
        valid_until = min(claims.expires_at.timestamp(), now.timestamp() + SESSION_SECONDS)
        self._sessions[authorization] = (user, valid_until)
        self._sessions.move_to_end(authorization)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return user

    def authenticate_fast(self, authorization: str | None) -> User | None:
        """The user, when this exact authorization value was checked moments ago and the
        user is within their rate limit (then charged one request); else None, and
        :meth:`authenticate` decides. Synchronous: the gRPC fast path calls it."""
        user = self._session(authorization)
        if user is None:
            return None
        limiter = self._limits.per_user
        if limiter is not None and limiter.check(user.id) is not None:
            return None  # over the limit: the slow path refuses it with the retry hint
        return user

    def refund_fast(self, user: User) -> None:
        """Give back the request :meth:`authenticate_fast` took when the fast path did not
        answer after all: the slow path's :meth:`authenticate` charges the call again, and
        one call is one request."""
        if self._limits.per_user is not None:
            self._limits.per_user.refund(user.id)

    def _session(self, authorization: str | None) -> User | None:
        if not authorization:
            return None
        session = self._sessions.get(authorization)
        if session is None:
            return None
        user, valid_until = session
        if self._clock().timestamp() >= valid_until:
            del self._sessions[authorization]
            return None
        return user

    @staticmethod
    def require_admin(user: User) -> User:
        """``user`` when an admin; PermissionDenied otherwise. Admin RPCs call it after
        :meth:`authenticate`, which reads the role afresh from the database on every call."""
        if user.role != "admin":
            raise PermissionDenied("this call needs an admin account")
        return user
