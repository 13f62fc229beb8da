"""Pure logic: query validation and cache keys, Marvel's dates, parsing upstream JSON."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from marveld.domain.characters import Character, CharacterPage, parse_marvel_time
from marveld.domain.errors import InvalidArgument, UpstreamError
from marveld.domain.queries import (
    MAX_CHARACTER_ID,
    CharacterQuery,
    SearchQuery,
    check_character_id,
)
from marveld.domain.users import check_name, check_password, normalize_email
from marveld.services.passwords import load_common_passwords


def test_equivalent_queries_share_one_cache_key() -> None:
    a = CharacterQuery.parse(name_starts_with="  Spider ", order_by="NAME")
    b = CharacterQuery.parse(name_starts_with="spider", limit=20, offset=0)
    assert a.cache_key() == b.cache_key()
    assert a.cache_key() != CharacterQuery.parse(name_starts_with="spider", limit=21).cache_key()


def test_search_is_a_name_prefix_until_the_read_model_exists() -> None:
    assert SearchQuery.parse(" Iron ", 5, None).upstream_query() == CharacterQuery(
        name_starts_with="Iron", limit=5
    )


def test_upstream_params_carry_every_filter_in_marvel_names() -> None:
    query = CharacterQuery.parse(
        name="Hulk", name_starts_with="H", modified_since="2014-01-31", order_by="-modified"
    )
    assert query.upstream_params() == {
        "name": "Hulk",
        "nameStartsWith": "H",
        "modifiedSince": "2014-01-31T00:00:00+00:00",
        "orderBy": "-modified",
        "limit": "20",
        "offset": "0",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2014-01-31", datetime(2014, 1, 31, tzinfo=UTC)),
        ("2014-01-31T12:00:00Z", datetime(2014, 1, 31, 12, tzinfo=UTC)),
        ("2014-01-31T12:00:00+02:00", datetime(2014, 1, 31, 10, tzinfo=UTC)),
    ],
)
def test_modified_since_forms(text: str, expected: datetime) -> None:
    assert CharacterQuery.parse(modified_since=text).modified_since == expected


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"limit": 0}, "limit", "at least 1"),
        ({"limit": 101}, "limit", "at most 100"),
        ({"offset": -1}, "offset", "not be negative"),
        ({"offset": 10**9}, "offset", "at most"),
        ({"order_by": "goofiness"}, "order_by", "one of"),
        ({"modified_since": "yesterday"}, "modified_since", "not a date"),
        ({"modified_since": "2014-01-31T12:00:00"}, "modified_since", "offset"),
        ({"name": " "}, "name", "blank"),
        ({"name": "a\x00b"}, "name", "control characters"),
        ({"name_starts_with": "x" * 257}, "name_starts_with", "at most 256"),
    ],
)
def test_bad_queries_name_the_field(kwargs: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        CharacterQuery.parse(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert message in str(info.value)
    assert str(info.value).startswith(f"{field}: ")


def test_empty_search_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="query: must not be empty"):
        SearchQuery.parse("   ", None, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2014-04-29T14:18:17-0400", datetime(2014, 4, 29, 18, 18, 17, tzinfo=UTC)),
        ("1969-12-31T19:00:00-0500", datetime(1970, 1, 1, tzinfo=UTC)),
        ("-0001-11-30T00:00:00-0500", None),
        ("0000-01-01T00:00:00-0500", None),
        ("2014-02-30T00:00:00-0500", None),
        ("garbage", None),
    ],
)
def test_marvel_times_and_their_placeholders(raw: str, expected: datetime | None) -> None:
    assert parse_marvel_time(raw) == expected


RAW = {
    "id": 1009610,
    "name": "Spider-Man (Peter Parker)",
    "description": "Bitten by a radioactive spider",
    "modified": "2020-07-21T10:30:10-0400",
    "thumbnail": {
        "path": "http://i.annihil.us/u/prod/marvel/i/mg/3/50/526548a343e4b",
        "extension": "jpg",
    },
    "resourceURI": "http://gateway.marvel.com/v1/public/characters/1009610",
    "comics": {"available": 4128, "items": []},
    "series": {"available": 1064},
    "urls": [{"type": "detail", "url": "http://marvel.com/x"}],
}


def test_character_from_marvel_json() -> None:
    c = Character.from_marvel(RAW)
    assert c.image_url == "http://i.annihil.us/u/prod/marvel/i/mg/3/50/526548a343e4b.jpg"
    assert (c.comics_available, c.series_available, c.stories_available) == (4128, 1064, 0)
    assert c.modified == datetime(2020, 7, 21, 14, 30, 10, tzinfo=UTC)
    assert Character.from_json(c.to_json()) == c
    changed = Character.from_marvel({**RAW, "description": "new"})
    assert changed.content_hash() != c.content_hash()
    assert Character.from_marvel(dict(RAW)).content_hash() == c.content_hash()


@pytest.mark.parametrize(
    "broken",
    [
        {**RAW, "id": "1009610"},
        {**RAW, "id": True},
        {**RAW, "name": None},
        {k: v for k, v in RAW.items() if k != "name"},
        {**RAW, "comics": {"available": "many"}},
        {**RAW, "urls": [{"type": 1, "url": "x"}]},
    ],
)
def test_malformed_characters_are_upstream_errors(broken: dict[str, object]) -> None:
    with pytest.raises(UpstreamError):
        Character.from_marvel(broken)


def test_page_round_trip_and_malformed_envelopes() -> None:
    envelope = {
        "attributionText": "Data provided by Marvel. © 2022 MARVEL",
        "etag": "abc",
        "data": {"offset": 0, "limit": 20, "total": 1, "count": 1, "results": [RAW]},
    }
    page = CharacterPage.from_marvel(envelope)
    assert CharacterPage.from_json(page.to_json()) == page
    data: dict[str, object] = envelope["data"]  # type: ignore[assignment]
    broken_envelopes: list[dict[str, object]] = [
        {},
        {"data": {"results": {}}},
        {"data": {**data, "total": "1"}},
    ]
    for broken in broken_envelopes:
        with pytest.raises(UpstreamError):
            CharacterPage.from_marvel(broken)


def test_user_input_checks_name_the_field() -> None:
    assert normalize_email("  Peter@Example.COM ") == "peter@example.com"
    assert check_name("  Peter ") == "Peter"
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: normalize_email(""), "email"),
        (lambda: normalize_email("no-at-sign"), "email"),
        (lambda: normalize_email("a@b.c" + "c" * 260), "email"),
        (lambda: check_name(" "), "name"),
        (lambda: check_name("x" * 101), "name"),
        (lambda: check_name("a\nb"), "name"),
        (lambda: check_password("short"), "password"),
        (lambda: check_password("x" * 257), "password"),
        (lambda: check_password("long enough\x00"), "password"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidArgument) as info:
            call()
        assert info.value.field == field


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Pe\u202eter", "must not contain bidirectional override characters"),  # RLO
        ("Pe\u2067ter", "must not contain bidirectional override characters"),  # RLI
        ("Pe\x85ter", "must not contain control characters"),  # C1 (NEL)
        ("\u200b\u200b", "must contain a visible character"),  # zero-width spaces only
        ("\u0301\u0308", "must contain a visible character"),  # combining marks only
    ],
)
def test_names_that_would_display_as_something_else_are_refused(name: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^name: {message}$"):
        check_name(name)


def test_names_in_any_script_are_kept_normalized() -> None:
    assert check_name("Jose\u0301") == "Jos\u00e9"  # NFC: one character, as typed elsewhere
    assert check_name("\u0645\u0631\u064a\u0645") == "\u0645\u0631\u064a\u0645"  # Arabic
    assert check_name("\u0928\u093f\u0915\u094d\u200d\u0937")  # Devanagari with a ZWJ
    assert check_name("' OR 1=1; --") == "' OR 1=1; --"  # SQL is just text (queries bind it)


def test_emails_are_normalized_and_hidden_characters_refused() -> None:
    assert normalize_email("Jose\u0301@Example.com") == "jos\u00e9@example.com"
    for hostile in ("a\u200b@example.com", "a@exa\u202emple.com", "a\x00@example.com",
                    "a\ue000@example.com"):  # fmt: skip
        with pytest.raises(InvalidArgument, match=r"^email: is not an email address$"):
            normalize_email(hostile)


def test_the_most_common_passwords_are_refused() -> None:
    common = load_common_passwords()
    assert len(common) > 19_000
    assert all(p == p.lower() for p in common)
    for password in ("password12", "PASSWORD12", "  1234567890 ", "qwertyuiop", "#1pimp    "):
        with pytest.raises(InvalidArgument, match=r"^password: is one of the most common"):
            check_password(password, common)
    assert check_password("correct horse battery", common) == "correct horse battery"
    assert check_password("password12") == "password12"  # no list, no refusal


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("1899-12-31", "must be 1900-01-01 or later"),
        ("0001-01-01T00:00:00+01:00", "is out of range"),
        ("9999-12-31T23:00:00-14:00", "is out of range"),
    ],
)
def test_modified_since_bounds(since: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^modified_since: {message}$"):
        CharacterQuery.parse(modified_since=since)


def test_character_ids_and_control_characters_in_queries() -> None:
    assert check_character_id(1) == 1
    assert check_character_id(MAX_CHARACTER_ID) == MAX_CHARACTER_ID
    for bad in (0, -1, MAX_CHARACTER_ID + 1, 2**63 - 1):
        with pytest.raises(InvalidArgument, match=r"^id: must be a Marvel character id"):
            check_character_id(bad)
    with pytest.raises(InvalidArgument, match=r"^name: must not contain control characters$"):
        CharacterQuery.parse(name="Spider\x9bMan")  # C1 (CSI)
