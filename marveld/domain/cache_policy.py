"""When a cached answer is fresh, stale, or gone: the cache's policies as pure logic."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from marveld.domain.characters import CharacterPage


class Freshness(enum.Enum):
    FRESH = "fresh"  # serve it, no upstream call
    REVALIDATE = "revalidate"  # serve it now, refresh it in the background (once)
    IF_ERROR = "if_error"  # ask the upstream; serve it only if the upstream fails
    DEAD = "dead"  # too old to serve at all


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """All durations in seconds (see the ``cache.*`` settings)."""

    ttl: float
    stale_while_revalidate: float
    stale_if_error: float
    negative_ttl: float
    # How long after a full answer the upstream is asked with its etag (If-None-Match).
    etag_max_age: float = float("inf")

    def conditional(self, fetched_at: datetime, now: datetime) -> bool:
        """Whether a copy fetched in full at ``fetched_at`` may be revalidated with its
        etag, or must be fetched again unconditionally (its etag is too old to trust)."""
        return (now - fetched_at).total_seconds() < self.etag_max_age

    def expires_at(self, page: CharacterPage, now: datetime) -> datetime:
        """Fresh until then: empty answers (no characters) for the short negative TTL."""
        seconds = self.negative_ttl if not page.characters else self.ttl
        return now + timedelta(seconds=seconds)

    def freshness(self, expires_at: datetime, now: datetime) -> Freshness:
        if now < expires_at:
            return Freshness.FRESH
        late = (now - expires_at).total_seconds()
        if late < self.stale_while_revalidate:
            return Freshness.REVALIDATE
        if late < self.stale_if_error:
            return Freshness.IF_ERROR
        return Freshness.DEAD

    @property
    def retention(self) -> timedelta:
        """How long past its expiry an entry can still be served; older rows are swept."""
        return timedelta(seconds=max(self.stale_while_revalidate, self.stale_if_error))
