"""Retries for upstream calls: exponential backoff with full jitter, ``Retry-After`` honoured.

Only :class:`Retryable` is retried; the client raises it for timeouts, connection errors,
5xx, 429 and malformed answers. Everything else (404, other 4xx, bugs) passes through.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TypeVar

import trio

from marveld.domain.errors import UpstreamError, UpstreamUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` counts every attempt (1 = no retry); waits are in seconds."""

    max_attempts: int = 4
    backoff_initial: float = 0.2
    backoff_max: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 <= self.backoff_initial <= self.backoff_max:
            raise ValueError(
                "backoff needs 0 <= backoff_initial <= backoff_max, got "
                f"{self.backoff_initial} and {self.backoff_max}"
            )

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """Full jitter after the ``failures``-th failed attempt (1-based):
        ``uniform(0, min(backoff_max, backoff_initial * 2 ** (failures - 1)))``."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2.0 ** min(failures - 1, 64))
        return (rng or random).uniform(0.0, ceiling)


class Retryable(Exception):
    """One attempt failed in a way another attempt may fix.

    ``retry_after`` is the server's hint in seconds. ``malformed`` marks an answer that
    arrived but could not be used: it is retried once (a proxy may have truncated it), and
    a second one ends the call with :class:`UpstreamError`, since a server that answers
    garbage twice will not stop, and every call counts against the daily quota.
    """

    def __init__(
        self, reason: str, *, retry_after: float | None = None, malformed: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.malformed = malformed


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (delta-seconds or an HTTP date); None if unusable."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": UTC, source unknown
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]], policy: RetryPolicy, what: str
) -> T:
    """Await ``attempt()`` until it succeeds, raises something other than Retryable, or the
    policy gives up (then UpstreamUnavailable, or UpstreamError for malformed answers).

    Hand-written rather than stamina (DESIGN §1 prefers it): stamina's backoff is additive
    jitter, ``min(wait_max, initial * 2**n + uniform(0, jitter))``, not full jitter; getting
    full jitter and "Retry-After beyond the cap ends the call with retry_after" means
    computing every wait in its ``on=`` hook anyway, which gets neither the attempt number
    (for the log line) nor the budget. Its default hooks also register a counter in the
    process-global Prometheus registry. What is left to share is this loop. The sleep is
    trio.sleep, so a caller's cancel scope or deadline interrupts a wait.
    """
    malformed = 0
    for number in range(1, policy.max_attempts + 1):
        try:
            return await attempt()
        except Retryable as exc:
            hint, last = exc.retry_after, number == policy.max_attempts
            malformed += exc.malformed
            if exc.malformed and (malformed > 1 or last):
                raise UpstreamError(
                    f"upstream {what} gave an unusable answer ({exc.reason}); "
                    f"{number} attempt(s), {malformed} malformed"
                ) from exc
            if hint is not None and hint > policy.backoff_max:
                raise UpstreamUnavailable(
                    f"upstream {what} failed ({exc.reason}) and asks to retry after {hint:g}s, "
                    f"longer than the {policy.backoff_max:g}s limit; gave up after "
                    f"{number} attempt(s)",
                    retry_after=hint,
                ) from exc
            if last:
                raise UpstreamUnavailable(
                    f"upstream {what} failed ({exc.reason}) after {number} attempt(s)",
                    retry_after=hint,
                ) from exc
            delay = policy.backoff(number) if hint is None else hint
            log.warning(
                "upstream %s failed (%s), retry %d/%d in %.2fs",
                what,
                exc.reason,
                number + 1,
                policy.max_attempts,
                delay,
            )
            await trio.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover
