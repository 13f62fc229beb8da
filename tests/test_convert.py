"""The wire bytes of cached answers: what betterproto2 clients decode them to."""

from __future__ import annotations

import json

from marveld.domain.characters import Character, CharacterPage
from marveld.grpc import convert
from marveld.proto.marvel import v1 as pb
from marveld.services.characters import CacheStatus
from tests.conftest import RECORDED_SLICE


def recorded_page() -> CharacterPage:
    raw = json.loads(RECORDED_SLICE.read_text())[:20]
    return CharacterPage(
        characters=tuple(Character.from_marvel(c) for c in raw),
        offset=0,
        limit=20,
        total=40,
        count=20,
        attribution_text="Data provided by Marvel. © 2022 MARVEL",
    )


def test_a_cached_page_plus_its_suffix_is_the_whole_page() -> None:
    page = recorded_page()
    body = convert.encode_answer("characters?limit=20", page)
    decoded = pb.CharacterPage.parse(body + convert.cache_suffix(CacheStatus.STALE, 300))
    assert decoded.cache_status is pb.CacheStatus.STALE
    assert decoded.cache_age_seconds == 300
    assert [c.id for c in decoded.characters] == [c.id for c in page.characters]
    for got, want in zip(decoded.characters, page.characters, strict=True):
        assert (got.name, got.description, got.image_url) == (
            want.name,
            want.description,
            want.image_url,
        )
        assert got.modified == want.modified
        assert got.modified_raw == want.modified_raw
        assert [(u.type, u.url) for u in got.urls] == [(u.type, u.url) for u in want.urls]
    assert (decoded.total, decoded.count, decoded.attribution_text) == (
        40,
        20,
        page.attribution_text,
    )


def test_a_later_suffix_wins_and_zero_is_sent() -> None:
    body = convert.encode_answer("characters?limit=20", recorded_page())
    twice = (
        body + convert.cache_suffix(CacheStatus.STALE, 9) + convert.cache_suffix(CacheStatus.HIT, 0)
    )
    decoded = pb.CharacterPage.parse(twice)
    assert (decoded.cache_status, decoded.cache_age_seconds) == (pb.CacheStatus.HIT, 0)
    big = pb.CharacterPage.parse(body + convert.cache_suffix(CacheStatus.MISS, 10**9))
    assert big.cache_age_seconds == 10**9


def test_single_characters_and_unknown_ids() -> None:
    page = recorded_page()
    one = CharacterPage(page.characters[:1], 0, 1, 1, 1, "")
    decoded = pb.Character.parse(convert.encode_answer("characters/1009144", one))
    assert decoded.id == page.characters[0].id
    assert convert.encode_answer("characters/1", CharacterPage((), 0, 1, 0, 0, "")) == b""
