"""The memory tier's bounds: entries and bytes, least recently used out first."""

from __future__ import annotations

from datetime import UTC, datetime

from marveld.domain.characters import Character, CharacterPage
from marveld.services.memory_tier import Answer, MemoryTier, entry_size

NOW = datetime(2026, 11, 24, tzinfo=UTC)


def character(marvel_id: int) -> Character:
    return Character(
        id=marvel_id,
        name=f"Hero {marvel_id}",
        description="",
        image_url="",
        modified_raw="",
        resource_uri="",
        comics_available=0,
        series_available=0,
        stories_available=0,
        events_available=0,
        urls=(),
    )


def answer(key: str, *ids: int, size: int = 100) -> Answer:
    page = CharacterPage(
        characters=tuple(character(i) for i in ids),
        offset=0,
        limit=20,
        total=len(ids),
        count=len(ids),
        attribution_text="",
    )
    return Answer(key, page, NOW, NOW, None, b"x" * size)


def test_entries_are_bounded_least_recently_used_first() -> None:
    evicted: list[int] = []
    tier = MemoryTier(max_entries=2, max_bytes=10**6, on_evict=evicted.append)
    tier.put(answer("a"))
    tier.put(answer("b"))
    assert tier.get("a") is not None  # a is now the most recent
    tier.put(answer("c"))
    assert [key for key, _ in tier.items()] == ["a", "c"]
    assert evicted == [1]


def test_bytes_are_bounded_and_an_oversized_answer_is_not_kept() -> None:
    size = 1000
    tier = MemoryTier(max_entries=100, max_bytes=2 * entry_size(size))
    for key in "abc":
        tier.put(answer(key, size=size))
    assert [key for key, _ in tier.items()] == ["b", "c"]
    assert tier.bytes == 2 * entry_size(size)
    tier.put(answer("huge", size=10**6))
    assert tier.get("huge") is None
    assert len(tier) == 2


def test_replacing_forgetting_and_clearing_keep_the_byte_count_right() -> None:
    tier = MemoryTier(max_entries=10, max_bytes=10**6)
    tier.put(answer("a", 1, 2, size=10))
    tier.put(answer("a", 1, size=20))
    tier.put(answer("b", 2, size=30))
    tier.put(answer("c", 3, size=40))
    assert tier.bytes == entry_size(20) + entry_size(30) + entry_size(40)
    assert tier.forget_characters([2, 3]) == ["b", "c"]
    assert tier.forget(["a", "missing"]) == 1
    assert (len(tier), tier.bytes) == (0, 0)
    tier.put(answer("d"))
    assert tier.clear() == 1
    assert tier.bytes == 0


def test_a_zero_sized_tier_keeps_nothing() -> None:
    tier = MemoryTier(max_entries=0, max_bytes=10**6)
    tier.put(answer("a"))
    assert tier.get("a") is None
