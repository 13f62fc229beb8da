"""Marvel's server-side auth (``ts``, ``apikey``, ``hash = md5(ts + private + public)``) and
the daily call budget per public key."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta

from marveld.sim import errors

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def marvel_hash(ts: str, private_key: str, public_key: str) -> str:
    """The hex md5 a client sends as ``hash``."""
    return hashlib.md5((ts + private_key + public_key).encode()).hexdigest()


def check_credentials(params: Mapping[str, str], public_key: str, private_key: str) -> str:
    """The caller's public key when ``ts``, ``apikey`` and ``hash`` check out, else the
    409 (missing) or 401 (wrong) Marvel answered."""
    apikey = params.get("apikey", "")
    hash_ = params.get("hash", "")
    ts = params.get("ts", "")
    if not apikey:
        raise errors.missing_parameter("user key")
    if not hash_:
        raise errors.missing_parameter("hash")
    if not ts:
        raise errors.missing_parameter("timestamp")
    if not hmac.compare_digest(apikey.encode(), public_key.encode()):
        raise errors.invalid_credentials("The passed API key is invalid.")
    expected = marvel_hash(ts, private_key, public_key)
    if not hmac.compare_digest(hash_.lower().encode(), expected.encode()):
        raise errors.invalid_credentials("That hash, timestamp and key combination is invalid.")
    return apikey


class DailyQuota:
    """Calls per public key per UTC day. Every call counts, the refused ones too."""

    def __init__(self, clock: Clock = utc_now) -> None:
        self.clock = clock
        self._day: date | None = None
        self._used: dict[str, int] = {}

    def used(self, key: str) -> int:
        """Calls ``key`` made today."""
        self._roll_over()
        return self._used.get(key, 0)

    def spend(self, key: str, limit: int | None) -> int | None:
        """Count one call; None when it is within ``limit``, else the seconds to wait (the
        next UTC midnight, at least 1)."""
        now = self._roll_over()
        self._used[key] = self._used.get(key, 0) + 1
        if limit is None or self._used[key] <= limit:
            return None
        midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        log.debug("key over its daily limit of %d (%d calls)", limit, self._used[key])
        return max(1, math.ceil((midnight - now).total_seconds()))

    def _roll_over(self) -> datetime:
        now = self.clock().astimezone(UTC)
        if now.date() != self._day:
            self._day = now.date()
            self._used.clear()
        return now
