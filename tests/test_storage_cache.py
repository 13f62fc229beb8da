"""Storage: the persistent cache tier. Same rules as ``test_storage.py``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import trio

from marveld.domain.characters import Character, CharacterPage
from marveld.storage import CacheEntry, StorageError, Store
from tests.stores import rows
from tests.test_storage import T0, character, refuse_inserts

TTL = timedelta(hours=1)


def page(*characters: Character, etag: str | None = "etag-1", offset: int = 0) -> CharacterPage:
    return CharacterPage(
        characters=tuple(characters),
        offset=offset,
        limit=20,
        total=1562,
        count=len(characters),
        attribution_text="Data provided by Marvel. © 2026 MARVEL",
        etag=etag,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "marveld.sqlite3"


async def tags(store: Store) -> set[tuple[str, int]]:
    found = await rows(
        store,
        "SELECT cache_key, marvel_id FROM cache_characters JOIN cache ON cache.id = cache_id",
    )
    return {(key, marvel_id) for key, marvel_id in found}


async def test_put_then_get_round_trips_the_page(store: Store) -> None:
    stored = page(character(1, name="Spider-Man", description="Ünïcode ✓"), character(2))
    await store.cache.put("characters?limit=20", stored, now=T0, expires_at=T0 + TTL)
    entry = await store.cache.get("characters?limit=20")
    assert entry == CacheEntry(
        key="characters?limit=20",
        page=stored,
        created_at=T0,
        expires_at=T0 + TTL,
        etag="etag-1",
        character_ids=(1, 2),
        body_fetched_at=T0,
    )
    assert await store.cache.get("characters?limit=21") is None
    assert await tags(store) == {("characters?limit=20", 1), ("characters?limit=20", 2)}


async def test_empty_page_without_etag(store: Store) -> None:
    empty = page(etag=None, offset=5000)
    await store.cache.put("empty", empty, now=T0, expires_at=T0 + TTL)
    entry = await store.cache.get("empty")
    assert entry is not None
    assert (entry.page, entry.etag, entry.character_ids) == (empty, None, ())


async def test_put_replaces_on_refresh(store: Store) -> None:
    await store.cache.put("k", page(character(1), character(2)), now=T0, expires_at=T0 + TTL)
    later = T0 + timedelta(minutes=90)
    fresh = page(character(2), character(3), etag="etag-2")
    await store.cache.put("k", fresh, now=later, expires_at=later + TTL)
    entry = await store.cache.get("k")
    assert entry is not None
    assert entry.page == fresh
    assert (entry.created_at, entry.expires_at) == (later, later + TTL)
    assert (entry.etag, entry.character_ids) == ("etag-2", (2, 3))
    assert await store.cache.count() == 1
    assert await tags(store) == {("k", 2), ("k", 3)}


async def test_get_returns_expired_entries(store: Store) -> None:
    await store.cache.put("k", page(character(1)), now=T0, expires_at=T0 - timedelta(seconds=1))
    entry = await store.cache.get("k")
    assert entry is not None
    assert entry.expires_at < T0


async def test_delete_expired_removes_only_expired(store: Store) -> None:
    now = T0 + timedelta(hours=5)
    await store.cache.put("old", page(character(1)), now=T0, expires_at=now - timedelta(seconds=1))
    await store.cache.put("edge", page(character(2)), now=T0, expires_at=now)
    await store.cache.put("fresh", page(character(3)), now=T0, expires_at=now + timedelta(days=1))
    assert await store.cache.delete_expired(now) == 2
    assert await store.cache.get("old") is None
    assert await store.cache.get("edge") is None
    assert await store.cache.get("fresh") is not None
    assert await store.cache.count() == 1
    assert await tags(store) == {("fresh", 3)}  # tags went with their entries (ON DELETE CASCADE)
    assert await store.cache.delete_expired(now) == 0


async def test_delete_clear_count(store: Store) -> None:
    for n in range(5):
        await store.cache.put(f"k{n}", page(character(n)), now=T0, expires_at=T0 + TTL)
    assert await store.cache.count() == 5
    assert await store.cache.delete("k0") is True
    assert await store.cache.delete("k0") is False
    assert await store.cache.count() == 4
    assert await store.cache.clear() == 4
    assert await store.cache.count() == 0
    assert await store.cache.clear() == 0
    assert await tags(store) == set()
    # the characters the pages held stay: the cache is not the source of truth
    assert await store.characters.get(3) == character(3)


async def test_put_upserts_the_pages_characters(store: Store) -> None:
    await store.characters.upsert_many([character(1)], T0)
    changed = character(1, description="changed")
    await store.cache.put("k", page(changed, character(2)), now=T0, expires_at=T0 + TTL)
    assert await store.characters.get(1) == changed
    assert await store.characters.get(2) == character(2)
    # the page's characters are now stored and identical: nothing left to change
    assert await store.characters.upsert_many([changed, character(2)], T0) == 0


async def test_put_is_one_transaction(store: Store) -> None:
    """A failure while upserting the characters leaves no cache row behind."""

    await refuse_inserts(store, "characters", "refused")
    with pytest.raises(StorageError, match="refused"):
        await store.cache.put("k", page(character(1)), now=T0, expires_at=T0 + TTL)
    assert await store.cache.get("k") is None
    assert await tags(store) == set()


async def test_parallel_puts_all_land(store: Store) -> None:
    async def put(n: int) -> None:
        await store.cache.put(f"k{n}", page(character(n % 7)), now=T0, expires_at=T0 + TTL)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(put, n)
    assert await store.cache.count() == 50
    for n in range(7):
        assert await store.characters.get(n) == character(n)
