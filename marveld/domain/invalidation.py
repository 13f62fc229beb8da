"""Which cached list queries a batch of changed characters touches.

A cached page is wrong after a change when it holds the character (found by its tags) or
when its query matches the character, before or after the change: an addition or a rename
moves other characters between pages, and a new ``modified`` moves it within
``orderBy=modified``. :class:`ChangedNames` answers the second question for many cached
queries at once: names sorted once, each query a binary search.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from datetime import datetime

from marveld.domain.characters import Character
from marveld.domain.queries import CharacterQuery, fold_name

_AFTER_EVERY_CHARACTER = "\U0010ffff"


class ChangedNames:
    """The folded names and ``modified`` times of the characters a batch changed (their
    versions before and after the change both count)."""

    def __init__(self, characters: Iterable[Character]) -> None:
        pairs = sorted(
            {(fold_name(c.name), c.modified) for c in characters},
            key=lambda pair: pair[0],
        )
        self._names = [name for name, _ in pairs]
        self._times = [modified for _, modified in pairs]

    def __bool__(self) -> bool:
        return bool(self._names)

    def touches(self, query: CharacterQuery) -> bool:
        """True when some changed character matches ``query`` (on any of its pages)."""
        if query.name is not None:
            low = self._start(fold_name(query.name))
            high = low
            while high < len(self._names) and self._names[high] == fold_name(query.name):
                high += 1
        elif query.name_starts_with is not None:
            prefix = query.name_starts_with.casefold()
            low = self._start(prefix)
            high = self._start(prefix + _AFTER_EVERY_CHARACTER)
        else:
            low, high = 0, len(self._names)
        since = query.modified_since
        return any(_since(self._times[i], since) for i in range(low, high))

    def _start(self, name: str) -> int:
        return bisect_left(self._names, name)


def _since(modified: datetime | None, since: datetime | None) -> bool:
    if since is None:
        return True
    return modified is not None and modified >= since
