"""Pure change-detection rules: the diff and its events, cache keys read back as queries,
which cached queries a change touches, webhook signatures and payloads, search terms."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from marveld.domain.changes import (
    CHARACTER_ADDED,
    CHARACTER_UPDATED,
    Event,
    Provenance,
    diff,
    event_for,
    project,
)
from marveld.domain.characters import Character, CharacterUrl
from marveld.domain.errors import InvalidArgument
from marveld.domain.invalidation import ChangedNames
from marveld.domain.queries import CharacterQuery, SearchQuery, fold_name
from marveld.domain.webhooks import (
    PayloadInvalid,
    SignatureRefused,
    WebhookPayload,
    sign,
    signature_header,
    verify,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLL = Provenance(source="poll", correlation_id="poll:run-1", causation_id="poll:run-1")


def hero(
    marvel_id: int = 1009610,
    name: str = "Spider-Man",
    description: str = "",
    modified: str = "2014-04-29T14:18:17-0400",
) -> Character:
    return Character(
        id=marvel_id,
        name=name,
        description=description,
        image_url="http://i.annihil.us/u/prod/marvel/i/mg/3/50/526548a343e4b.jpg",
        modified_raw=modified,
        resource_uri=f"http://gateway.marvel.com/v1/public/characters/{marvel_id}",
        comics_available=4128,
        series_available=1,
        stories_available=2,
        events_available=3,
        urls=(CharacterUrl(type="detail", url="http://marvel.com/x"),),
    )


# --- the diff ------------------------------------------------------------------------------------


def test_identical_content_is_no_change() -> None:
    assert diff(hero(), hero()) is None


def test_a_new_id_is_an_addition() -> None:
    change = diff(None, hero())
    assert change is not None
    assert change.added
    event = event_for(change, POLL, NOW, new_id=lambda: "e-1")
    assert event == Event(
        id="e-1",
        stream_id="character-1009610",
        type=CHARACTER_ADDED,
        correlation_id="poll:run-1",
        causation_id="poll:run-1",
        occurred_at=datetime(2014, 4, 29, 18, 18, 17, tzinfo=UTC),
        created_at=NOW,
        data={"marvel_id": 1009610, "name": "Spider-Man", "character": hero().to_json()},
    )


def test_a_changed_description_is_one_update_listing_the_change() -> None:
    before = hero()
    after = hero(description="Bitten by a radioactive spider", modified="2026-03-01T07:00:00-0500")
    change = diff(before, after)
    assert change is not None
    assert not change.added
    assert change.fields == ("description", "modified")
    event = event_for(change, POLL, NOW)
    assert event.type == CHARACTER_UPDATED
    assert event.data == {
        "marvel_id": 1009610,
        "name": "Spider-Man",
        "fields": ["description", "modified"],
        "changes": {
            "description": "Bitten by a radioactive spider",
            "modified": "2026-03-01T07:00:00-0500",
        },
        "previous": {"description": "", "modified": "2014-04-29T14:18:17-0400"},
    }
    assert event.occurred_at == NOW
    assert len(event.id) == 36  # a uuid


def test_content_counts_not_only_modified() -> None:
    change = diff(hero(), hero(name="Spider-Man (Peter Parker)"))
    assert change is not None
    assert change.fields == ("name",)


def test_older_data_never_reverts_a_newer_change() -> None:
    newer = hero(description="new", modified="2026-01-01T00:00:00-0500")
    assert diff(newer, hero(description="old")) is None


def test_a_placeholder_date_occurs_now() -> None:
    change = diff(None, hero(modified="-0001-11-30T00:00:00-0500"))
    assert change is not None
    assert event_for(change, POLL, NOW).occurred_at == NOW
    # A placeholder on either side cannot be compared: the content decides.
    assert diff(hero(modified="-0001-11-30T00:00:00-0500"), hero()) is not None


def test_the_projection_reads_the_events_alone() -> None:
    added = event_for(diff(None, hero()), POLL, NOW)  # type: ignore[arg-type]
    state = project(None, added)
    assert state == hero().to_json()
    changed = hero(description="new", modified="2026-01-01T00:00:00-0500")
    updated = event_for(diff(hero(), changed), POLL, NOW)  # type: ignore[arg-type]
    assert project(state, updated) == changed.to_json()
    with pytest.raises(ValueError, match="never added"):
        project(None, updated)
    with pytest.raises(ValueError, match="unknown event type"):
        project(state, dataclasses.replace(updated, type="CharacterDeleted"))


def test_only_the_bootstrap_is_bulk() -> None:
    assert Provenance(source="bootstrap", correlation_id="bootstrap:1").bulk
    assert not POLL.bulk


# --- cache keys back to queries, and what a query matches --------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        CharacterQuery(),
        CharacterQuery.parse(name_starts_with="Spider ", limit=5, offset=40),
        CharacterQuery.parse(name="Iron Man", order_by="-modified"),
        CharacterQuery.parse(name="a+b & c=d", modified_since="2014-01-31"),
        CharacterQuery.parse(name_starts_with="Straße", modified_since="2014-01-31T12:30:00Z"),
    ],
)
def test_a_cache_key_reads_back_as_its_query(query: CharacterQuery) -> None:
    again = CharacterQuery.from_cache_key(query.cache_key())
    assert again.cache_key() == query.cache_key()
    for name in ("order_by", "limit", "offset", "modified_since"):
        assert getattr(again, name) == getattr(query, name)


@pytest.mark.parametrize(
    "key",
    [
        "characters/1009610",
        "characters?name=x",
        "characters?name=&nameStartsWith=&modifiedSince=&orderBy=sideways&limit=20&offset=0",
        "characters?name=&nameStartsWith=&modifiedSince=&orderBy=name&limit=500&offset=0",
        "search?q=x",
    ],
)
def test_other_keys_are_not_list_queries(key: str) -> None:
    with pytest.raises(ValueError, match="not a character list key"):
        CharacterQuery.from_cache_key(key)


def test_matches_follows_the_upstream_filters() -> None:
    spider = hero(name="Spider-Man ")
    assert CharacterQuery().matches(spider)
    assert CharacterQuery.parse(name="spider-man").matches(spider)
    assert not CharacterQuery.parse(name="spider").matches(spider)
    assert CharacterQuery.parse(name_starts_with="SPIDER").matches(spider)
    assert not CharacterQuery.parse(name_starts_with="Iron").matches(spider)
    assert CharacterQuery.parse(modified_since="2014-04-29").matches(spider)
    assert not CharacterQuery.parse(modified_since="2014-05-01").matches(spider)
    placeholder = hero(modified="-0001-11-30T00:00:00-0500")
    assert not CharacterQuery.parse(modified_since="1900-01-01").matches(placeholder)
    assert fold_name("Karolina Dean ") == "karolina dean"


def test_changed_names_touch_the_queries_they_match() -> None:
    changed = [hero(name="Spider-Man"), hero(2, name="Iron Man")]
    names = ChangedNames(changed)
    assert names
    assert not ChangedNames([])
    cases = {
        CharacterQuery(): True,
        CharacterQuery.parse(name_starts_with="spider"): True,
        CharacterQuery.parse(name_starts_with="iron m"): True,
        CharacterQuery.parse(name_starts_with="hulk"): False,
        CharacterQuery.parse(name_starts_with="spider-man 2099"): False,
        CharacterQuery.parse(name="IRON MAN"): True,
        CharacterQuery.parse(name="Iron"): False,
        CharacterQuery.parse(modified_since="2014-04-01"): True,
        CharacterQuery.parse(modified_since="2020-01-01"): False,
        CharacterQuery.parse(name="Iron Man", modified_since="2020-01-01"): False,
    }
    for query, expected in cases.items():
        assert names.touches(query) is expected, query
        # The same answer as asking each character.
        assert any(query.matches(c) for c in changed) is expected


# --- webhooks ------------------------------------------------------------------------------------

SECRET = "whsec-test"
BODY = b'{"type":"character.updated","ids":[1009610],"occurred_at":"2026-03-01T12:00:00Z"}'


def test_a_signed_fresh_delivery_is_accepted_and_named_by_its_signature() -> None:
    t = int(NOW.timestamp())
    header = signature_header(SECRET, t, BODY)
    assert header == f"t={t},v1={sign(SECRET, t, BODY)}"
    assert verify(SECRET, header, BODY, NOW) == sign(SECRET, t, BODY)
    # Within five minutes either way; extra signatures (a rotated secret) are fine.
    assert verify(SECRET, header, BODY, NOW + timedelta(seconds=300))
    assert verify(SECRET, header + ",v1=" + "0" * 64, BODY, NOW - timedelta(seconds=299))


@pytest.mark.parametrize(
    ("header", "body", "reason"),
    [
        (None, BODY, "missing"),
        ("", BODY, "missing"),
        ("v1=" + "a" * 64, BODY, "malformed"),
        ("t=1772366400", BODY, "malformed"),
        ("t=soon,v1=" + "a" * 64, BODY, "malformed"),
        ("t=1772366400,v1=" + "a" * 64, BODY, "does not match"),
        ("t=1772366400,v1=" + sign("wrong secret", 1772366400, BODY), BODY, "does not match"),
        ("t=1772366400,v1=" + sign(SECRET, 1772366400, BODY), BODY + b" ", "does not match"),
        ("t=1772366099,v1=" + sign(SECRET, 1772366099, BODY), BODY, "tolerance"),
        ("t=1772366701,v1=" + sign(SECRET, 1772366701, BODY), BODY, "tolerance"),
    ],
)
def test_unsigned_forged_and_stale_deliveries_are_refused(
    header: str | None, body: bytes, reason: str
) -> None:
    assert int(NOW.timestamp()) == 1772366400
    with pytest.raises(SignatureRefused, match=reason):
        verify(SECRET, header, body, NOW)


def test_payload_parses_and_round_trips() -> None:
    payload = WebhookPayload.parse(BODY)
    assert payload == WebhookPayload(
        type="character.updated", ids=(1009610,), occurred_at=datetime(2026, 3, 1, 12, tzinfo=UTC)
    )
    assert WebhookPayload.parse(json.dumps(payload.to_json()).encode()) == payload
    marvel_time = (
        b'{"type":"character.added","ids":[5,5,6],"occurred_at":"2026-03-01T07:00:00-0500"}'
    )
    assert WebhookPayload.parse(marvel_time).ids == (5, 6)
    assert WebhookPayload.parse(b'{"type":"character.added","ids":[1]}').occurred_at is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"type":"character.deleted","ids":[1]}', "type"),
        (b'{"type":"character.added","ids":[]}', "ids"),
        (b'{"type":"character.added","ids":[true]}', "ids"),
        (b'{"type":"character.added","ids":["1"]}', "ids"),
        (b'{"type":"character.added","ids":[-1]}', "ids"),
        (json.dumps({"type": "character.added", "ids": list(range(1, 102))}).encode(), "ids"),
        (b'{"type":"character.added","ids":[1],"occurred_at":5}', "occurred_at"),
        (b'{"type":"character.added","ids":[1],"occurred_at":"yesterday"}', "occurred_at"),
        (b'{"type":"character.added","ids":[1],"occurred_at":"2026-03-01T12:00:00"}', "offset"),
    ],
)
def test_bad_payloads_name_what_is_wrong(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadInvalid, match=reason):
        WebhookPayload.parse(body)


# --- search terms --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("  Spider man ", ("spider", "man")),
        ('"', ()),
        ("*", ()),
        ("spider AND man", ("spider", "and", "man")),
        ("NEAR(spider", ("near", "spider")),
        ("spi\x00der", ("spi", "der")),
        ('x" OR 1=1 --', ("x", "or", "1")),
        ("Araña araña", ("araña",)),
        ("snake_case", ("snake", "case")),
    ],
)
def test_search_text_is_data(text: str, terms: tuple[str, ...]) -> None:
    assert SearchQuery.parse(text, None, None).terms == terms


def test_search_needs_text_and_bounds_its_page() -> None:
    for blank in ("", "   ", "\x00\t"):
        with pytest.raises(InvalidArgument, match="query: must not be empty"):
            SearchQuery.parse(blank, None, None)
    with pytest.raises(InvalidArgument, match="query: must be at most"):
        SearchQuery.parse("x" * 300, None, None)
    with pytest.raises(InvalidArgument, match="limit"):
        SearchQuery.parse("x", 0, None)
    query = SearchQuery.parse(" iron\nman ", 5, 10)
    assert query.upstream_query() == CharacterQuery(name_starts_with="iron man", limit=5, offset=10)
    assert len(SearchQuery.parse(" ".join(f"w{i}" for i in range(40)), None, None).terms) == 16
