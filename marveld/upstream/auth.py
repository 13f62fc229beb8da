"""Marvel's server-side authentication: ``ts``, ``apikey`` and ``hash`` on every request.

``hash = md5(ts + private_key + public_key)``. The private key goes into the digest and
nowhere else: not into a URL, a log line, an exception or a repr.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable


def signature(ts: str, private_key: str, public_key: str) -> str:
    """Marvel's request hash (md5 is the protocol's choice, not a security decision of ours)."""
    digest = hashlib.md5((ts + private_key + public_key).encode(), usedforsecurity=False)
    return digest.hexdigest()


class MarvelAuth:
    """Signs requests with fresh, strictly increasing millisecond timestamps."""

    __slots__ = ("_clock", "_last_ts", "_private_key", "public_key")

    def __init__(
        self, public_key: str, private_key: str, clock: Callable[[], float] = time.time
    ) -> None:
        if not public_key.strip() or not private_key.strip():
            raise ValueError("the Marvel public and private keys must both be set")
        self.public_key = public_key
        self._private_key = private_key
        self._clock = clock
        self._last_ts = 0

    def __repr__(self) -> str:
        return f"MarvelAuth(public_key={self.public_key!r}, private_key=<hidden>)"

    def params(self) -> dict[str, str]:
        """``ts``, ``apikey`` and ``hash`` for one attempt; ``ts`` never repeats."""
        ts = max(int(self._clock() * 1000), self._last_ts + 1)
        self._last_ts = ts
        text = str(ts)
        return {
            "ts": text,
            "apikey": self.public_key,
            "hash": signature(text, self._private_key, self.public_key),
        }
