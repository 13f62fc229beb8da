"""Rate limits: GCRA per key, in memory, synchronous; and the login throttle built on it.

No library fits. `limits`, the best-kept Python one, reads ``time.time()`` itself (tests
could not move time, and wall time steps) and its memory storage takes threading locks;
aiolimiter is asyncio-only and waits instead of refusing; trio has concurrency limits
(CapacityLimiter), not rates. So this stays small and fully tested (tests/test_ratelimit.py).

GCRA (the generic cell rate algorithm) is a token bucket kept as one float per key, the
"theoretical arrival time" (TAT): each allowed request pushes it ``1 / rate`` seconds on,
and a request is refused while the TAT is more than ``burst - 1`` intervals ahead of now.
A key whose TAT has passed has a full bucket, so forgetting it loses nothing: idle keys are
evicted as calls go by, and past ``max_keys`` the least recently used key goes too.

:meth:`RateLimiter.check` never awaits and touches nothing but its own object: it is safe
from trio code and from asyncio code on the same thread (a grpclib handler answering a
cache hit without hopping into trio), not from other threads.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from marveld.domain.errors import ResourceExhausted
from marveld.storage.coordination import SharedRates

Clock = Callable[[], float]  # monotonic seconds
DEFAULT_MAX_KEYS = 100_000  # ~15 MB at most per limiter
_EVICT_PER_CALL = 2  # idle keys looked at per call: O(1) work, keeps up with any call rate


def gcra_wait(tat: float, now: float, tolerance: float) -> float | None:
    """The seconds a request must wait for a key whose TAT is ``tat``, or None."""
    wait = tat - now - tolerance
    return wait if wait > 0 else None


class RateLimiter:
    """``rate`` requests a second per key, ``burst`` of them at once."""

    def __init__(
        self, rate: float, burst: int, clock: Clock, *, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)) or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst and max_keys at least 1")
        self._interval = 1.0 / rate
        self._tolerance = self._interval * (burst - 1)  # how far ahead of now a TAT may be
        self._clock = clock
        self._max_keys = max_keys
        self._tats: OrderedDict[str, float] = OrderedDict()  # least recently charged first

    def __len__(self) -> int:
        return len(self._tats)

    @property
    def interval(self) -> float:
        """Seconds one request pushes a key's TAT on."""
        return self._interval

    @property
    def tolerance(self) -> float:
        """How far ahead of now a key's TAT may be."""
        return self._tolerance

    def check(self, key: str) -> float | None:
        """Take one request for ``key``: None when allowed, else the seconds to wait."""
        now = self._clock()
        tat = max(self._tats.get(key, now), now)
        if (wait := gcra_wait(tat, now, self._tolerance)) is not None:
            return wait
        self._tats[key] = tat + self._interval
        self._tats.move_to_end(key)
        self._evict(now)
        return None

    def peek(self, key: str) -> float | None:
        """What :meth:`check` would answer, without taking a request."""
        now = self._clock()
        return gcra_wait(max(self._tats.get(key, now), now), now, self._tolerance)

    def refund(self, key: str) -> None:
        """Give back one request taken by :meth:`check`."""
        if key in self._tats:
            self._tats[key] -= self._interval
            if self._tats[key] <= self._clock():
                del self._tats[key]

    def reset(self, key: str) -> None:
        """A full bucket for ``key`` again."""
        self._tats.pop(key, None)

    def _evict(self, now: float) -> None:
        for _ in range(_EVICT_PER_CALL):
            oldest, tat = next(iter(self._tats.items()))
            if tat > now:
                break
            del self._tats[oldest]
        while len(self._tats) > self._max_keys:
            self._tats.popitem(last=False)


def address_key(peer: str) -> str:
    """The key of a client address: an IPv4 address, or the /64 of an IPv6 one (one host
    usually holds a whole /64); anything else as it is."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _retry_message(what: str, wait: float) -> str:
    return f"{what}; retry after {math.ceil(wait)} s"


class RateLimits:
    """Requests per signed-in user and per client address (unauthenticated calls).

    A limiter left out (None) is no limit. ``per_user`` is public for callers that answer
    outside the services (a cache fast path): ``per_user.check(user_id)``.
    """

    def __init__(
        self, *, per_user: RateLimiter | None = None, per_address: RateLimiter | None = None
    ) -> None:
        self.per_user = per_user
        self.per_address = per_address

    def check_user(self, user_id: str) -> None:
        """Take one request for the user; ResourceExhausted with the wait when over."""
        if self.per_user is not None and (wait := self.per_user.check(user_id)) is not None:
            raise ResourceExhausted(_retry_message("too many requests", wait), wait)

    def check_address(self, peer: str) -> None:
        """Take one unauthenticated request for the client address."""
        if self.per_address is None:
            return
        if (wait := self.per_address.check(address_key(peer))) is not None:
            raise ResourceExhausted(
                _retry_message("too many requests from this address", wait), wait
            )


class LoginThrottle:
    """Failed logins per account and per client address.

    Every attempt is counted as a failure before the password is checked (so concurrent
    guesses cannot all slip in before the first one fails) and refunded when it succeeds:
    a success resets the account's count and gives back the address's one attempt, but
    never clears the address's earlier failures (else an attacker would log in to an account
    of their own between guesses at others).
    """

    def __init__(self, *, per_account: RateLimiter, per_address: RateLimiter) -> None:
        self._accounts = per_account
        self._addresses = per_address

    async def begin(self, account: str | None, peer: str) -> None:
        """Count one attempt; ResourceExhausted when the account or the address has failed
        too often. ``account`` is the normalized email (None when it is not an email), known
        or not: throttling only existing accounts would tell which exist."""
        keys = [(self._addresses, address_key(peer))]
        if account is not None:
            keys.append((self._accounts, account))
        waits = [wait for limiter, key in keys if (wait := limiter.peek(key)) is not None]
        if waits:
            wait = max(waits)
            raise ResourceExhausted(_retry_message("too many failed logins", wait), wait)
        for limiter, key in keys:
            limiter.check(key)

    async def succeeded(self, account: str, peer: str) -> None:
        self._accounts.reset(account)
        self._addresses.refund(address_key(peer))


class SharedLoginThrottle:
    """:class:`LoginThrottle`'s rules, with the counts in the database (``rates``), so
    that the replicas on one database throttle as one: guesses at one account spread over
    them are limited as if sent to one. Each attempt is one transaction with the account's
    and the address's counts locked. The counts are wall-clock times (``clock``, seconds
    since the epoch): the replicas' clocks must agree to well within the window (NTP)."""

    def __init__(
        self,
        rates: SharedRates,
        *,
        per_account: RateLimiter,
        per_address: RateLimiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """The limiters say the rates (their interval and tolerance); their own counts
        are not used."""
        self._rates = rates
        self._account = per_account
        self._address = per_address
        self._clock = clock

    def _keys(self, account: str | None, peer: str) -> dict[str, RateLimiter]:
        keys = {f"address:{address_key(peer)}": self._address}
        if account is not None:
            keys[f"account:{account}"] = self._account
        return keys

    async def begin(self, account: str | None, peer: str) -> None:
        """As :meth:`LoginThrottle.begin`."""
        keys = self._keys(account, peer)
        now = self._clock()

        def decide(tats: Mapping[str, float]) -> tuple[dict[str, float | None], float | None]:
            times = {key: max(tats.get(key, now), now) for key in keys}
            waits = [
                wait
                for key, limiter in keys.items()
                if (wait := gcra_wait(times[key], now, limiter.tolerance)) is not None
            ]
            if waits:
                return {}, max(waits)
            return {key: times[key] + limiter.interval for key, limiter in keys.items()}, None

        if (wait := await self._rates.change(list(keys), decide, expired=now)) is not None:
            raise ResourceExhausted(_retry_message("too many failed logins", wait), wait)

    async def succeeded(self, account: str, peer: str) -> None:
        """As :meth:`LoginThrottle.succeeded`."""
        address = f"address:{address_key(peer)}"
        now = self._clock()

        def decide(tats: Mapping[str, float]) -> tuple[dict[str, float | None], None]:
            refunded = tats.get(address, now) - self._address.interval
            return {f"account:{account}": None, address: refunded if refunded > now else None}, None

        await self._rates.change([f"account:{account}", address], decide, expired=now)


Throttle = LoginThrottle | SharedLoginThrottle
