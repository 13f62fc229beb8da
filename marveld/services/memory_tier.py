"""The hot tier: a bounded LRU of answers in memory, each with its encoded response.

Bounded by entries and by bytes; evicting the least recently used. Plain synchronous code
with no awaits, so the gRPC face may read it on its fast path without entering trio.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from marveld.domain.characters import CharacterPage

# What an entry costs in memory, for the byte bound: the decoded page (Python objects) and
# its encoded bytes together take ~3.3 times the encoded size (measured with tracemalloc for
# pages of 1 to 40 recorded characters: 3.3-4.1), plus the key and the objects around them.
# Counting the encoded bytes alone let a "64 MiB" tier grow to ~210 MiB of RSS (the soak).
RESIDENT_PER_ENCODED_BYTE = 3.3
ENTRY_OVERHEAD_BYTES = 512


def entry_size(encoded_bytes: int) -> int:
    """An entry's estimated memory from the size of its encoded answer."""
    return round(encoded_bytes * RESIDENT_PER_ENCODED_BYTE) + ENTRY_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class Answer:
    """A cached answer: the page, when it was fetched, when it stops being fresh, and the
    response already encoded for the wire (by the face that serves it)."""

    key: str
    page: CharacterPage
    fetched_at: datetime
    expires_at: datetime
    etag: str | None
    encoded: bytes
    body_fetched_at: datetime | None = None  # when not fetched_at: the last 200 (see 304s)

    @property
    def size(self) -> int:
        return entry_size(len(self.encoded))


class MemoryTier:
    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        self._entries: OrderedDict[str, Answer] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._on_evict = on_evict

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def items(self) -> list[tuple[str, Answer]]:
        """A snapshot, least recently used first."""
        return list(self._entries.items())

    def get(self, key: str) -> Answer | None:
        answer = self._entries.get(key)
        if answer is not None:
            self._entries.move_to_end(key)
        return answer

    def put(self, answer: Answer) -> None:
        """Keep ``answer``; an answer larger than the whole tier is not kept."""
        self._drop(answer.key)
        if self._max_entries == 0 or answer.size > self._max_bytes:
            return
        self._entries[answer.key] = answer
        self._bytes += answer.size
        evicted = 0
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self._bytes -= oldest.size
            evicted += 1
        if evicted and self._on_evict is not None:
            self._on_evict(evicted)

    def forget(self, keys: Iterable[str]) -> int:
        return sum(self._drop(key) for key in keys)

    def forget_characters(self, marvel_ids: Iterable[int]) -> list[str]:
        """Drop every answer holding one of these characters; the keys dropped."""
        wanted = set(marvel_ids)
        keys = [
            key
            for key, answer in self._entries.items()
            if any(c.id in wanted for c in answer.page.characters)
        ]
        self.forget(keys)
        return keys

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        self._bytes = 0
        return count

    def _drop(self, key: str) -> bool:
        old = self._entries.pop(key, None)
        if old is None:
            return False
        self._bytes -= old.size
        return True
