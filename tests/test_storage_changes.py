"""Storage: a batch applied in ONE transaction (characters, events, read table and FTS,
cache invalidation, sync state, webhook deliveries), local search, and migration 2.

Same rules as ``test_storage.py``: both backends through ``store``, fixed timestamps, raw
SQL through the store's connections; sqlite3 directly only for SQLite's own migration 2.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from marveld.domain.changes import CHARACTER_ADDED, CHARACTER_UPDATED, Provenance
from marveld.domain.characters import Character, CharacterPage
from marveld.domain.queries import CharacterQuery, SearchQuery
from marveld.storage import LATEST_VERSION, StorageError, Store
from marveld.storage.reads import fts_match
from marveld.storage.schema import MIGRATIONS
from marveld.storage.sync_state import BOOTSTRAP, POLL_CHECKPOINT
from tests.stores import rows
from tests.test_storage import T0, character, raw_db, refuse_inserts, texts

POLL = Provenance(source="poll", correlation_id="poll:run-1", causation_id="poll:run-1")
TTL = timedelta(hours=1)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "marveld.sqlite3"


def file_rows(db_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows read from the SQLite file itself (migration 2 is SQLite's)."""
    with raw_db(db_path) as conn:
        return [tuple(row) for row in conn.execute(sql, params)]


async def events(store: Store) -> list[tuple[int, str, str, str, dict[str, Any]]]:
    return [
        (seq, stream, kind, correlation, json.loads(data))
        for seq, stream, kind, correlation, data in await rows(
            store, "SELECT seq, stream_id, type, correlation_id, data FROM events ORDER BY seq"
        )
    ]


def page(*characters: Character) -> CharacterPage:
    return CharacterPage(
        characters=tuple(characters),
        offset=0,
        limit=20,
        total=len(characters),
        count=len(characters),
        attribution_text="Data provided by Marvel. © 2026 MARVEL",
        etag="etag-1",
    )


def list_key(**fields: Any) -> str:
    return CharacterQuery.parse(**fields).cache_key()


async def test_a_batch_adds_characters_events_and_read_rows(store: Store) -> None:
    spider = character(1, name="Spider-Man", description="Bitten by a radioactive spider")
    result = await store.changes.apply(
        [spider, character(2, name="Iron Man"), spider], provenance=POLL, now=T0
    )
    assert (result.added, result.updated, result.changed) == (2, 0, 2)
    assert [e.seq for e in result.events] == [1, 2]
    assert (await events(store)) == [
        (1, "character-1", CHARACTER_ADDED, "poll:run-1", result.events[0].data),
        (2, "character-2", CHARACTER_ADDED, "poll:run-1", result.events[1].data),
    ]
    assert (await texts(store, "SELECT causation_id, created_at, occurred_at FROM events"))[0] == (
        "poll:run-1",
        T0.isoformat(),
        "2014-04-29T18:18:17.000000+00:00",
    )
    assert await texts(
        store, "SELECT marvel_id, name, name_folded, modified_at FROM character_reads ORDER BY 1"
    ) == [
        (1, "Spider-Man", "spider-man", "2014-04-29T18:18:17.000000+00:00"),
        (2, "Iron Man", "iron man", "2014-04-29T18:18:17.000000+00:00"),
    ]
    assert await store.reads.get(1) == spider
    assert await store.reads.get(3) is None
    assert await store.characters.get(2) == character(2, name="Iron Man")


async def test_the_same_data_again_adds_no_events(store: Store) -> None:
    batch = [character(n) for n in range(1, 6)]
    await store.changes.apply(batch, provenance=POLL, now=T0)
    again = await store.changes.apply(batch, provenance=POLL, now=T0 + TTL)
    assert again.changed == 0
    assert again.events == ()
    assert len(await events(store)) == 5


async def test_a_change_is_one_update_and_the_read_side_follows(
    store: Store,
) -> None:
    await store.changes.apply([character(1, name="Spider-Man")], provenance=POLL, now=T0)
    changed = character(1, name="Spider-Man", description="Now with a café")
    result = await store.changes.apply([changed], provenance=POLL, now=T0 + TTL)
    assert (result.added, result.updated) == (0, 1)
    (seq, stream, kind, _, data) = (await events(store))[-1]
    assert (seq, stream, kind) == (2, "character-1", CHARACTER_UPDATED)
    assert data["fields"] == ["description"]
    assert data["changes"] == {"description": "Now with a café"}
    assert await store.reads.get(1) == changed
    found = await store.reads.search(SearchQuery.parse("cafe", None, None).terms, limit=5, offset=0)
    assert found.characters == (changed,)
    # characters keeps its created_at and takes the new updated_at
    assert await texts(store, "SELECT created_at, updated_at FROM characters") == [
        (T0.isoformat(), (T0 + TTL).isoformat())
    ]


async def test_sequence_numbers_keep_growing_across_batches(store: Store) -> None:
    first = await store.changes.apply([character(1), character(2)], provenance=POLL, now=T0)
    second = await store.changes.apply([character(3)], provenance=POLL, now=T0)
    third = await store.changes.apply(
        [character(1, description="x"), character(4)], provenance=POLL, now=T0
    )
    seqs = [e.seq for r in (first, second, third) for e in r.events]
    assert seqs == [1, 2, 3, 4, 5]


async def test_state_rows_and_deliveries_are_written_with_the_batch(
    store: Store,
) -> None:
    assert await store.webhooks.record(
        "d1", kind="character.updated", ids=[1], occurred_at=None, now=T0
    )
    await store.changes.apply(
        [character(1)],
        provenance=POLL,
        now=T0,
        state={POLL_CHECKPOINT: {"modified_since": "2014-04-29T18:18:17+00:00"}},
        delivery_id="d1",
    )
    assert await store.sync_state.get(POLL_CHECKPOINT) == {
        "modified_since": "2014-04-29T18:18:17+00:00"
    }
    assert await store.webhooks.pending() == []
    # state alone, without characters, is written too
    await store.changes.apply([], provenance=POLL, now=T0, state={"k": [1, 2]})
    assert await store.sync_state.get_many("k", "missing") == {"k": [1, 2], "missing": None}


async def test_a_failing_batch_leaves_nothing(store: Store) -> None:
    """A failure after the characters, events and read rows were written: all or none."""
    with pytest.raises(TypeError):
        await store.changes.apply(
            [character(1), character(2)], provenance=POLL, now=T0, state={"bad": object()}
        )
    for table in ("characters", "events", "character_reads", "sync_state"):
        assert await rows(store, f"SELECT count(*) FROM {table}") == [(0,)], table
    assert await store.reads.search(["hero"], limit=5, offset=0) == (
        await store.reads.search([], limit=5, offset=0)
    )


# --- cache invalidation --------------------------------------------------------------------------


async def fill_cache(store: Store) -> None:
    spider, iron = character(1, name="Spider-Man"), character(2, name="Iron Man")
    entries = {
        list_key(): page(spider, iron),
        list_key(name_starts_with="spider"): page(spider),
        list_key(name_starts_with="iron"): page(iron),
        list_key(name_starts_with="hulk"): page(),
        list_key(name="Spider-Woman"): page(),
        list_key(modified_since="2020-01-01"): page(),
        "characters/1": page(spider),
        "characters/2": page(iron),
    }
    for key, value in entries.items():
        await store.cache.put(key, value, now=T0, expires_at=T0 + TTL)


async def cached_keys(store: Store) -> set[str]:
    keys = await rows(store, "SELECT cache_key FROM cache")
    return {key for (key,) in keys}


async def test_a_change_invalidates_what_holds_it_or_matches_it(store: Store) -> None:
    await fill_cache(store)
    before = await cached_keys(store)
    renamed = character(1, name="Spider-Woman")  # was Spider-Man
    result = await store.changes.apply([renamed], provenance=POLL, now=T0)
    gone = {
        list_key(),  # holds it
        list_key(name_starts_with="spider"),  # holds it, matches before and after
        list_key(name="Spider-Woman"),  # matches it now: the page is missing it
        "characters/1",  # holds it
    }
    assert set(result.forgotten) == gone
    assert await cached_keys(store) == before - gone
    # Tags went with their entries.
    assert await rows(store, "SELECT count(*) FROM cache_characters WHERE marvel_id = 1") == [(0,)]


async def test_a_new_modified_invalidates_the_date_filtered_queries(store: Store) -> None:
    await fill_cache(store)
    bumped = character(2, name="Iron Man", description="x")
    bumped = Character.from_json({**bumped.to_json(), "modified": "2026-03-01T07:00:00-0500"})
    result = await store.changes.apply([bumped], provenance=POLL, now=T0)
    assert list_key(modified_since="2020-01-01") in result.forgotten
    assert list_key(name_starts_with="iron") in result.forgotten
    assert list_key(name_starts_with="spider") not in result.forgotten


async def test_additions_invalidate_matching_queries_only_when_asked(store: Store) -> None:
    await fill_cache(store)
    first_seen = await store.changes.apply(
        [character(3, name="Spider-Girl")], provenance=POLL, now=T0, match_added=False
    )
    assert first_seen.forgotten == ()
    new = await store.changes.apply([character(4, name="Spider-Ham")], provenance=POLL, now=T0)
    assert set(new.forgotten) == {list_key(), list_key(name_starts_with="spider")}


async def test_identical_data_invalidates_nothing(store: Store) -> None:
    await fill_cache(store)
    before = await cached_keys(store)
    result = await store.changes.apply(
        [character(1, name="Spider-Man"), character(2, name="Iron Man")], provenance=POLL, now=T0
    )
    assert result.forgotten == ()
    assert await cached_keys(store) == before


# --- the read-through path -----------------------------------------------------------------------


async def test_read_through_goes_through_the_diff(store: Store) -> None:
    key = list_key(name_starts_with="spider")
    other = list_key()
    assert await store.cache.put(key, page(character(1)), now=T0, expires_at=T0 + TTL) == ()
    assert await store.cache.put(other, page(character(1)), now=T0, expires_at=T0 + TTL) == ()
    assert [e[1:4] for e in (await events(store))] == [
        ("character-1", CHARACTER_ADDED, f"read-through:{key}")
    ]
    changed = character(1, description="changed")
    # The entry being written is kept (and refreshed); the other one holding the
    # character goes, and the caller learns its key.
    assert await store.cache.put(key, page(changed), now=T0, expires_at=T0 + TTL) == (other,)
    assert await cached_keys(store) == {key}
    assert [e[2] for e in (await events(store))] == [CHARACTER_ADDED, CHARACTER_UPDATED]
    assert await store.reads.get(1) == changed


async def test_read_through_additions_match_queries_once_the_first_sync_is_done(
    store: Store,
) -> None:
    await fill_cache(store)
    new = page(character(5, name="Spider-Kid"))
    key = list_key(name="Spider-Kid")
    # Before the first sync a character seen for the first time may be an old one.
    assert await store.cache.put(key, new, now=T0, expires_at=T0 + TTL) == ()
    await store.sync_state.put({BOOTSTRAP: {"completed_at": T0.isoformat()}}, T0)
    assert await store.sync_state.first_sync_done()
    newer = page(character(6, name="Spider-Kid II"))
    forgotten = await store.cache.put(
        list_key(name="Spider-Kid II"), newer, now=T0, expires_at=T0 + TTL
    )
    assert set(forgotten) == {list_key(), list_key(name_starts_with="spider")}


async def test_direct_upserts_record_events_too(store: Store) -> None:
    assert await store.characters.upsert_many([character(1)], T0) == 1
    assert [e[3] for e in (await events(store))] == ["direct"]


# --- local search --------------------------------------------------------------------------------


async def fill_catalog(store: Store) -> None:
    await store.changes.apply(
        [
            character(1, name="Spider-Man", description="Bitten by a radioactive spider"),
            character(2, name="Spider-Woman"),
            character(3, name="Iron Man", description="Genius; not a spider"),
            character(4, name="Araña", description='She says "NEAR(" and * and AND'),
            character(5, name="Hulk"),
        ],
        provenance=POLL,
        now=T0,
    )


async def search(store: Store, text: str, limit: int = 20, offset: int = 0) -> list[int]:
    result = await store.reads.search(
        SearchQuery.parse(text, None, None).terms, limit=limit, offset=offset
    )
    return [c.id for c in result.characters]


async def test_search_ranks_name_hits_first_and_pages(store: Store) -> None:
    await fill_catalog(store)
    spiders = await search(store, "spider")
    assert sorted(spiders[:2]) == [1, 2]  # name hits before a description hit
    assert spiders[2] == 3
    assert await search(store, "spi wom") == [2]  # every term, each as a prefix
    assert await search(store, "arana") == [4]  # diacritics do not matter
    assert await search(store, "spider", limit=1, offset=1) == spiders[1:2]
    result = await store.reads.search(["spider"], limit=1, offset=0)
    assert result.total == 3
    assert await search(store, "nobody") == []


@pytest.mark.parametrize(
    "text", ['"', '""', "*", "AND", "OR NOT", "NEAR(", "NEAR(spider", "spider\x00man", "a:b", "^x"]
)
async def test_hostile_search_text_is_data(store: Store, text: str) -> None:
    await fill_catalog(store)
    await search(store, text)  # never an error


async def test_fts_syntax_in_terms_is_quoted(store: Store) -> None:
    await fill_catalog(store)
    assert fts_match(['a"b', "near"]) == '"a""b"* "near"*'
    hits = await store.reads.search(['"', 'near"', "AND"], limit=5, offset=0)
    assert [c.id for c in hits.characters] == [4]
    assert (await search(store, 'NEAR( "and"')) == [4]


# --- deliveries, roles, migration ----------------------------------------------------------------


async def test_a_delivery_is_recorded_once_and_pending_until_applied(store: Store) -> None:
    record = {"kind": "character.updated", "ids": [1, 2], "occurred_at": T0}
    assert await store.webhooks.record("d1", now=T0, **record) is True  # type: ignore[arg-type]
    assert await store.webhooks.record("d1", now=T0, **record) is False  # type: ignore[arg-type]
    (pending,) = await store.webhooks.pending()
    assert (pending.id, pending.type, pending.ids) == ("d1", "character.updated", (1, 2))
    assert (pending.occurred_at, pending.received_at) == (T0, T0)
    await store.changes.apply([], provenance=POLL, now=T0, delivery_id="d1")
    assert await store.webhooks.pending() == []
    # Still remembered the next hour; forgotten a day later.
    later = T0 + timedelta(hours=1)
    assert await store.webhooks.record("d1", now=later, **record) is False  # type: ignore[arg-type]
    much_later = T0 + timedelta(days=2)
    assert await store.webhooks.record("d2", now=much_later, **record) is True  # type: ignore[arg-type]
    assert await store.webhooks.record("d1", now=much_later, **record) is True  # type: ignore[arg-type]


async def test_migration_2_gives_older_characters_their_events_and_read_rows(
    db_path: Path,
) -> None:
    # SQLite's migration 2 (PostgreSQL starts at the schema it led to).
    old = character(7, name="Old Timer", description="stored before the event log")
    placeholder = Character.from_json(
        {**character(8).to_json(), "modified": "-0001-11-30T00:00:00-0500"}
    )
    with raw_db(db_path) as conn:
        MIGRATIONS[0](conn)
        conn.execute("PRAGMA user_version = 1")
        for c in (old, placeholder):
            conn.execute(
                "INSERT INTO characters (id, marvel_id, name, description, image_url, modified,"
                " content_hash, data, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (str(uuid.uuid4()), c.id, c.name, c.description, c.image_url, c.modified_raw,
                 c.content_hash(), json.dumps(c.to_json()), T0.isoformat(), T0.isoformat()),
            )  # fmt: skip
        conn.commit()
    async with Store.open(db_path) as store:
        assert store.schema_version == LATEST_VERSION >= 2
        assert await store.reads.get(7) == old
        assert [
            c.id for c in (await store.reads.search(["event"], limit=5, offset=0)).characters
        ] == [7]
        # The next change is an update of what the migration recorded.
        result = await store.changes.apply(
            [character(7, name="Old Timer")], provenance=POLL, now=T0
        )
        assert result.updated == 1
    assert file_rows(
        db_path, "SELECT correlation_id, type, occurred_at FROM events ORDER BY seq"
    ) == [
        ("migration:2", CHARACTER_ADDED, "2014-04-29T18:18:17.000000+00:00"),
        ("migration:2", CHARACTER_ADDED, T0.isoformat()),
        ("poll:run-1", CHARACTER_UPDATED, "2014-04-29T18:18:17.000000+00:00"),
    ]
    assert file_rows(db_path, "SELECT marvel_id, modified_at FROM character_reads ORDER BY 1") == [
        (7, "2014-04-29T18:18:17.000000+00:00"),
        (8, None),
    ]


async def test_storage_errors_name_the_failure(store: Store) -> None:
    await refuse_inserts(store, "events", "no")
    with pytest.raises(StorageError, match="no"):
        await store.changes.apply([character(1)], provenance=POLL, now=T0)
    assert await store.characters.get(1) is None
