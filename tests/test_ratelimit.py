"""The GCRA limiter and the login throttle, driven by a clock the test moves by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from marveld.domain.errors import ResourceExhausted
from marveld.services.ratelimit import (
    LoginThrottle,
    RateLimiter,
    RateLimits,
    SharedLoginThrottle,
    Throttle,
    address_key,
)
from marveld.storage import Store


class Tick:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Tick()
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.check("k") for _ in range(3)] == [None, None, None]
    assert limiter.check("k") == pytest.approx(0.5)  # one more every 1/rate seconds
    clock.now += 0.25
    assert limiter.check("k") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.check("k") is None
    assert limiter.check("k") == pytest.approx(0.5)


def test_requests_at_the_rate_are_never_refused() -> None:
    clock = Tick()
    limiter = RateLimiter(rate=10, burst=1, clock=clock)
    for _ in range(100):
        assert limiter.check("k") is None
        clock.now += 0.1
    assert limiter.check("k") is None
    assert limiter.check("k") == pytest.approx(0.1)


def test_a_long_pause_refills_the_bucket_but_no_more_than_the_burst() -> None:
    clock = Tick()
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    assert limiter.check("k") is None
    assert limiter.check("k") is None
    clock.now += 3600
    assert [limiter.check("k") for _ in range(3)][-1] is not None


def test_keys_are_independent() -> None:
    limiter = RateLimiter(rate=1, burst=1, clock=Tick())
    assert limiter.check("alice") is None
    assert limiter.check("alice") is not None
    assert limiter.check("bob") is None


def test_peek_takes_nothing_refund_gives_one_back_reset_refills() -> None:
    clock = Tick()
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    assert limiter.peek("k") is None
    assert limiter.check("k") is None
    assert limiter.check("k") is None
    assert limiter.peek("k") == pytest.approx(1.0)
    assert limiter.peek("k") == pytest.approx(1.0)  # peeking twice costs nothing
    limiter.refund("k")
    assert limiter.peek("k") is None
    assert limiter.check("k") is None
    assert limiter.check("k") is not None
    limiter.reset("k")
    assert len(limiter) == 0
    limiter.refund("never-seen")  # nothing to give back
    limiter.reset("never-seen")
    assert limiter.check("k") is None
    limiter.refund("k")  # back to a full bucket: the key is forgotten
    assert len(limiter) == 0


def test_idle_keys_are_forgotten_as_calls_go_by() -> None:
    clock = Tick()
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    for i in range(10_000):
        assert limiter.check(f"client-{i}") is None
        clock.now += 0.01  # each key's bucket is full again 0.1 s after its request
    assert len(limiter) <= 20


def test_memory_is_bounded_and_the_least_recently_used_key_goes_first() -> None:
    clock = Tick()  # time stands still: no key is ever idle
    limiter = RateLimiter(rate=1, burst=1, clock=clock, max_keys=3)
    for key in ("a", "b", "c"):
        assert limiter.check(key) is None
    assert limiter.check("a") is not None  # a refusal leaves the order as it was
    assert limiter.check("d") is None  # one key too many: a, charged first, goes
    assert len(limiter) == 3
    assert limiter.check("a") is None  # evicted, so a full bucket again
    assert limiter.check("c") is not None  # c was kept


@pytest.mark.parametrize(
    ("rate", "burst", "max_keys"),
    [(0, 1, 1), (-1, 1, 1), (float("inf"), 1, 1), (1, 0, 1), (1, 1, 0)],
)
def test_bad_parameters(rate: float, burst: int, max_keys: int) -> None:
    with pytest.raises(ValueError, match="rate must be"):
        RateLimiter(rate, burst, Tick(), max_keys=max_keys)


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.1", "198.51.100.1"),
        ("unknown", "unknown"),
    ],
)
def test_address_keys(peer: str, key: str) -> None:
    assert address_key(peer) == key


def test_rate_limits_raise_resource_exhausted_with_the_wait() -> None:
    clock = Tick()
    limits = RateLimits(per_user=RateLimiter(1, 1, clock), per_address=RateLimiter(0.5, 1, clock))
    limits.check_user("u1")
    with pytest.raises(ResourceExhausted, match=r"^too many requests; retry after 1 s$") as info:
        limits.check_user("u1")
    assert info.value.retry_after == pytest.approx(1.0)
    limits.check_user("u2")
    limits.check_address("2001:db8::1")
    with pytest.raises(ResourceExhausted, match="from this address; retry after 2 s"):
        limits.check_address("2001:db8::2")  # the same /64
    unlimited = RateLimits()
    for _ in range(1000):
        unlimited.check_user("u1")
        unlimited.check_address("203.0.113.7")


MakeThrottle = Callable[..., Throttle]


@pytest.fixture(params=["memory", "postgres"])
async def throttle(request: pytest.FixtureRequest) -> AsyncIterator[MakeThrottle]:
    """Makes a login throttle: one process's (in memory), or the one replicas on one
    PostgreSQL database share (its counts in the database, on the test's clock too)."""
    window = 900.0

    def limiters(clock: Tick, account: int, address: int) -> dict[str, RateLimiter]:
        return {
            "per_account": RateLimiter(account / window, account, clock),
            "per_address": RateLimiter(address / window, address, clock),
        }

    if request.param == "memory":
        yield lambda clock, account=3, address=6: LoginThrottle(**limiters(clock, account, address))
        return
    url = request.getfixturevalue("postgres_url")
    async with Store.open_url(url) as store:
        rates = store.coordination.rates()
        assert rates is not None
        yield lambda clock, account=3, address=6: SharedLoginThrottle(
            rates, clock=clock, **limiters(clock, account, address)
        )


async def test_an_account_is_throttled_after_its_failures_whoever_asks(
    throttle: MakeThrottle,
) -> None:
    clock = Tick()
    logins = throttle(clock)
    for _ in range(3):
        await logins.begin("victim@example.com", "203.0.113.1")
    with pytest.raises(ResourceExhausted, match="too many failed logins") as info:
        await logins.begin("victim@example.com", "198.51.100.2")  # another address: still refused
    assert info.value.retry_after == pytest.approx(300.0)  # one more attempt per 900 s / 3
    await logins.begin("other@example.com", "203.0.113.1")  # another account is still open
    clock.now += 300
    await logins.begin("victim@example.com", "198.51.100.2")


async def test_an_address_is_throttled_after_its_failures_whatever_the_accounts(
    throttle: MakeThrottle,
) -> None:
    clock = Tick()
    logins = throttle(clock)
    for i in range(6):
        await logins.begin(f"user{i}@example.com", "203.0.113.1")
    with pytest.raises(ResourceExhausted):
        await logins.begin("fresh@example.com", "203.0.113.1")
    with pytest.raises(ResourceExhausted):
        await logins.begin(None, "203.0.113.1")  # not an email: the address still counts
    await logins.begin("fresh@example.com", "198.51.100.2")


async def test_success_resets_the_account_and_refunds_only_its_own_attempt(
    throttle: MakeThrottle,
) -> None:
    clock = Tick()
    logins = throttle(clock)
    for _ in range(2):
        await logins.begin("me@example.com", "203.0.113.1")
    await logins.begin("me@example.com", "203.0.113.1")
    await logins.succeeded("me@example.com", "203.0.113.1")
    for _ in range(3):  # the account's count starts over
        await logins.begin("me@example.com", "203.0.113.1")
    # The address: 2 failures + 1 refunded success + 3 failures = 5 of 6 taken.
    await logins.begin("someone@example.com", "203.0.113.1")
    with pytest.raises(ResourceExhausted):
        await logins.begin("someone-else@example.com", "203.0.113.1")


async def test_a_refused_attempt_takes_nothing(throttle: MakeThrottle) -> None:
    clock = Tick()
    logins = throttle(clock, account=1, address=2)
    await logins.begin("a@example.com", "203.0.113.1")
    for _ in range(5):
        with pytest.raises(ResourceExhausted):
            await logins.begin("a@example.com", "203.0.113.1")
    await logins.begin("b@example.com", "203.0.113.1")  # the address had one attempt left
