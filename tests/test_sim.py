"""The simulator speaks Marvel's protocol: auth, the list and detail endpoints, their errors,
the envelope, etags and gzip; and with the full recorded data set it reproduces the 40
recorded pages.

Rules: a real simulator on port 0 (started with ``nursery.start``, so it serves when the
test begins), httpx over loopback, no sleeps. Error bodies are compared with the real ones
recorded in ``tests/fixtures/marvel/errors/``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from marveld.sim import SimHandle, SimOptions, marvel_hash, run_sim

FIXTURES = Path(__file__).parent / "fixtures" / "marvel"
SLICE = FIXTURES / "characters.json"
RECORDED = Path(__file__).parents[2] / "shared" / "data" / "marvel"
PUBLIC = "test-sim-public"
PRIVATE = "test-sim-private"
OPTIONS = SimOptions(dataset=SLICE, public_key=PUBLIC, private_key=PRIVATE)
SPIDER_MAN = 1009610

Json = dict[str, Any]


def signed(
    params: dict[str, str] | None = None, *, private: str = PRIVATE, ts: str = "1700000000"
) -> dict[str, str]:
    """``params`` with Marvel's auth parameters added."""
    return {**(params or {}), "ts": ts, "apikey": PUBLIC, "hash": marvel_hash(ts, private, PUBLIC)}


def recorded_error(name: str) -> Json:
    body: Json = json.loads((FIXTURES / "errors" / f"{name}.json").read_text())
    return body


def slice_characters() -> dict[int, Json]:
    return {c["id"]: c for c in json.loads(SLICE.read_text(encoding="utf-8"))}


async def start(nursery: trio.Nursery, **changes: Any) -> SimHandle:
    """The simulator over the recorded slice, with ``changes`` to its options."""
    handle: SimHandle = await nursery.start(run_sim, dataclasses.replace(OPTIONS, **changes))
    return handle


@asynccontextmanager
async def client(handle: SimHandle, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=handle.url, timeout=10, **kwargs) as http:
        yield http


@pytest.fixture
async def simulator(nursery: trio.Nursery) -> SimHandle:
    return await start(nursery)


@pytest.fixture
async def http(simulator: SimHandle) -> AsyncIterator[httpx.AsyncClient]:
    async with client(simulator) as http:
        yield http


async def names(http: httpx.AsyncClient, **params: str) -> list[str]:
    r = await http.get("/characters", params=signed({"limit": "100", **params}))
    assert r.status_code == 200, r.text
    return [c["name"] for c in r.json()["data"]["results"]]


# --- the envelope and the default order ---------------------------------------------------------


async def test_a_page_is_marvels_envelope_in_marvels_order(http: httpx.AsyncClient) -> None:
    r = await http.get("/characters", params=signed({"limit": "100"}))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert list(body) == [
        "code", "status", "copyright", "attributionText", "attributionHTML", "etag", "data"
    ]  # fmt: skip
    assert body["code"] == 200
    assert body["status"] == "Ok"
    assert body["copyright"] == "© 2022 MARVEL"
    assert body["attributionText"] == "Data provided by Marvel. © 2022 MARVEL"
    assert body["attributionHTML"] == (
        '<a href="http://marvel.com">Data provided by Marvel. © 2022 MARVEL</a>'
    )
    assert re.fullmatch(r"[0-9a-f]{40}", body["etag"])
    data = body["data"]
    assert [data[k] for k in ("offset", "limit", "total", "count")] == [0, 100, 40, 40]
    # The characters come back exactly as recorded, key order included.
    recorded = slice_characters()
    for character in data["results"]:
        assert character == recorded[character["id"]]
        assert list(character) == list(recorded[character["id"]])
    ids = [c["id"] for c in data["results"]]
    listed = [c["name"] for c in data["results"]]
    # By name, case-insensitive, punctuation by code point; the higher id first on a tie.
    assert listed[:6] == ["3-D Man", "A.I.M.", "Araٌa", "Captain America", "Daily Bugle", "Empath"]
    assert listed[7:11] == ["Iron Fist (Danny Rand)", "Iron Man", "Iron Monger", "Ironclad"]
    assert ids[11:13] == [1009496, 1009327]  # the two Jean Grey
    assert listed[13:17] == ["Karolina Dean ", "Meggan", "pug", "Spider-dok"]
    assert listed[-1] == "Zzzax"


async def test_default_limit_is_20_and_offset_pages_on(http: httpx.AsyncClient) -> None:
    everything = await names(http)
    first = (await http.get("/characters", params=signed())).json()["data"]
    assert (first["limit"], first["count"]) == (20, 20)
    assert [c["name"] for c in first["results"]] == everything[:20]
    second = await names(http, limit="15", offset="30")
    assert second == everything[30:40]


async def test_offset_past_the_end_is_an_empty_page(http: httpx.AsyncClient) -> None:
    r = await http.get("/characters", params=signed({"limit": "50", "offset": "1950"}))
    assert r.status_code == 200
    data = r.json()["data"]
    assert data == {"offset": 1950, "limit": 50, "total": 40, "count": 0, "results": []}


# --- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dropped", "message"),
    [
        ("apikey", "You must provide a user key."),
        ("hash", "You must provide a hash."),
        ("ts", "You must provide a timestamp."),
    ],
)
async def test_a_missing_auth_parameter_is_a_409(
    http: httpx.AsyncClient, dropped: str, message: str
) -> None:
    params = signed()
    del params[dropped]
    r = await http.get("/characters", params=params)
    assert r.status_code == 409
    assert r.json() == {"code": "MissingParameter", "message": message}


async def test_an_unknown_key_is_a_401(http: httpx.AsyncClient) -> None:
    r = await http.get("/characters", params={**signed(), "apikey": "someone-else"})
    assert r.status_code == 401
    assert r.json() == recorded_error("invalid_credentials")


async def test_a_wrong_hash_is_a_401_before_any_parameter_check(http: httpx.AsyncClient) -> None:
    r = await http.get("/characters", params=signed({"bogus": "1"}, private="not-the-key"))
    assert r.status_code == 401
    assert r.json() == recorded_error("invalid_hash_ts_key_combo")
    r = await http.get(f"/characters/{SPIDER_MAN}", params={**signed(), "ts": "2"})
    assert r.status_code == 401


# --- filters and ordering ------------------------------------------------------------------------


async def test_name_is_exact_and_case_insensitive(http: httpx.AsyncClient) -> None:
    assert await names(http, name="spider-man (peter parker)") == ["Spider-Man (Peter Parker)"]
    assert await names(http, name="Spider-Man") == []
    assert await names(http, name="JEAN GREY") == ["Jean Grey", "Jean Grey"]
    # Trailing spaces do not count, as in Marvel's database: the recorded name has one.
    assert await names(http, name="Karolina Dean") == ["Karolina Dean "]


async def test_name_starts_with_is_a_case_insensitive_prefix(http: httpx.AsyncClient) -> None:
    spiders = await names(http, nameStartsWith="spider")
    assert len(spiders) == 21
    assert all(n.startswith("Spider") for n in spiders)
    assert await names(http, nameStartsWith="IRON") == [
        "Iron Fist (Danny Rand)", "Iron Man", "Iron Monger", "Ironclad"
    ]  # fmt: skip
    assert await names(http, nameStartsWith="Spider-Man (P") == ["Spider-Man (Peter Parker)"]
    assert await names(http, nameStartsWith="Nobody") == []


@pytest.mark.parametrize(
    "since",
    [
        "2020-01-01",
        "2020-01-01T00:00:00+00:00",  # what marveld sends
        "2020-01-01T00:00:00Z",
        "2019-12-31T19:00:00-0500",
        "2020-01-01T00:00:00 00:00",  # a "+" nobody percent-encoded arrives as a space
    ],
)
async def test_modified_since_takes_dates_and_times(http: httpx.AsyncClient, since: str) -> None:
    assert sorted(await names(http, modifiedSince=since)) == [
        "Captain America", "Hulk", "Spider-Gwen (Gwen Stacy)", "Spider-Man (Peter Parker)", "Thor"
    ]  # fmt: skip


async def test_placeholder_times_only_match_the_oldest_dates(http: httpx.AsyncClient) -> None:
    since_1970 = await names(http, modifiedSince="1969-01-01")
    assert "Iron Monger" in since_1970  # 1969-12-31T19:00:00-0500 is the Unix epoch
    assert "Empath" not in since_1970  # -0001-11-30T00:00:00-0500 is before everything
    assert len(since_1970) == 37


async def test_order_by_name_and_modified_both_ways(http: httpx.AsyncClient) -> None:
    by_name = await names(http, orderBy="name")
    assert by_name == await names(http)
    assert await names(http, orderBy="-name") == by_name[::-1]
    oldest = await names(http, orderBy="modified")
    assert oldest[:3] == ["Daily Bugle", "Empath", "Meggan"]  # the -0001 placeholder
    assert oldest[3:5] == ["Iron Monger", "Ironclad"]  # the 1969 placeholder, then by name
    assert oldest[-1] == "Spider-Man (Peter Parker)"  # 2021-06-30T17:32:26-0400
    newest = await names(http, orderBy="-modified")
    assert newest[:2] == ["Spider-Man (Peter Parker)", "Spider-Gwen (Gwen Stacy)"]
    assert set(newest[-3:]) == {"Daily Bugle", "Empath", "Meggan"}


async def test_order_by_a_list_and_filters_combine(http: httpx.AsyncClient) -> None:
    got = await names(http, nameStartsWith="iron", orderBy="modified,-name", limit="3")
    assert got == ["Ironclad", "Iron Monger", "Iron Man"]


async def test_comics_filter_uses_the_recorded_items(http: httpx.AsyncClient) -> None:
    spider_man = slice_characters()[SPIDER_MAN]
    comic = spider_man["comics"]["items"][0]["resourceURI"].rsplit("/", 1)[1]
    assert "Spider-Man (Peter Parker)" in await names(http, comics=f"{comic},999999999")


# --- parameter errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "recorded"),
    [
        ({"invalid_param": "1"}, "invalid_parameter"),
        ({"orderBy": "goofiness"}, "invalid_ordering"),
        ({"limit": "0"}, "limit_invalid"),
        ({"limit": "ten"}, "limit_invalid"),
        ({"limit": "-5"}, "limit_invalid"),
        ({"limit": ""}, "limit_invalid"),
        ({"limit": "101"}, "limit_over_100"),
        ({"limit": "9" * 5000}, "limit_over_100"),
        ({"name": ""}, "empty_parameter"),
        ({"name": "   "}, "empty_parameter"),
        ({"comics": ",".join(str(n) for n in range(1, 12))}, "excessive_filter_values"),
        ({"comics": "abc"}, "invalid_filter_value"),
    ],
)
async def test_parameter_errors_are_marvels_own(
    http: httpx.AsyncClient, params: dict[str, str], recorded: str
) -> None:
    r = await http.get("/characters", params=signed(params))
    assert r.status_code == 409
    assert r.json() == recorded_error(recorded)


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"nameStartsWith": ""}, "nameStartsWith cannot be blank if it is set"),
        ({"orderBy": "name,goofiness"}, "goofiness is not a valid ordering parameter."),
        ({"offset": "-1"}, "You must pass an integer offset greater than or equal to 0."),
        ({"modifiedSince": "yesterday"}, "yesterday is not a valid date."),
        ({"nameStartWith": "Spi"}, "We don't recognize the parameter nameStartWith"),
    ],
)
async def test_other_parameter_errors_follow_the_pattern(
    http: httpx.AsyncClient, params: dict[str, str], status: str
) -> None:
    r = await http.get("/characters", params=signed(params))
    assert r.status_code == 409
    assert r.json() == {"code": 409, "status": status}


# --- one character -------------------------------------------------------------------------------


async def test_one_character_by_id(http: httpx.AsyncClient) -> None:
    r = await http.get(f"/characters/{SPIDER_MAN}", params=signed())
    assert r.status_code == 200
    data = r.json()["data"]
    assert [data[k] for k in ("offset", "limit", "total", "count")] == [0, 20, 1, 1]
    assert data["results"] == [slice_characters()[SPIDER_MAN]]


@pytest.mark.parametrize("character_id", ["1", "1009610000", "spider-man"])
async def test_an_unknown_character_is_a_404(http: httpx.AsyncClient, character_id: str) -> None:
    r = await http.get(f"/characters/{character_id}", params=signed())
    assert r.status_code == 404
    assert r.json() == recorded_error("resource_not_found")


async def test_one_character_takes_no_list_parameters(http: httpx.AsyncClient) -> None:
    r = await http.get(f"/characters/{SPIDER_MAN}", params=signed({"limit": "5"}))
    assert r.status_code == 409
    assert r.json() == {"code": 409, "status": "We don't recognize the parameter limit"}


async def test_an_unknown_path_is_a_json_404(http: httpx.AsyncClient) -> None:
    r = await http.get("/comics", params=signed())
    assert r.status_code == 404
    assert r.json() == {"code": "ResourceNotFound", "message": "/v1/public/comics does not exist"}


# --- etag and gzip -------------------------------------------------------------------------------


async def test_if_none_match_with_the_etag_is_a_304(
    simulator: SimHandle, http: httpx.AsyncClient
) -> None:
    params = signed({"nameStartsWith": "Spider", "limit": "5"})
    first = await http.get("/characters", params=params)
    etag = first.json()["etag"]
    assert first.headers["etag"] == f'"{etag}"'
    for header in (first.headers["etag"], etag, f'W/"{etag}"', f'"other", "{etag}"'):
        again = await http.get("/characters", params=params, headers={"If-None-Match": header})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == first.headers["etag"]
    # Another page has another etag, so the old one no longer matches.
    other = await http.get(
        "/characters",
        params={**params, "limit": "6"},
        headers={"If-None-Match": first.headers["etag"]},
    )
    assert other.status_code == 200
    assert other.json()["etag"] != etag
    assert simulator.state.served == 6


async def test_the_etag_is_stable_for_the_same_answer(http: httpx.AsyncClient) -> None:
    one = await http.get(f"/characters/{SPIDER_MAN}", params=signed())
    two = await http.get(f"/characters/{SPIDER_MAN}", params=signed(ts="1700000001"))
    assert one.json()["etag"] == two.json()["etag"]


async def test_gzip_when_the_client_asks(http: httpx.AsyncClient) -> None:
    params = signed({"limit": "100"})
    zipped = await http.get("/characters", params=params, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.num_bytes_downloaded < len(zipped.content) / 3
    plain = await http.get("/characters", params=params, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert zipped.json() == plain.json()


# --- the full recorded data set ------------------------------------------------------------------


def recorded_pages() -> list[Path]:
    return sorted((RECORDED / "raw").glob("*/characters/*.json"))


@pytest.mark.recorded
@pytest.mark.skipif(
    not (RECORDED / "characters.json").is_file() or len(recorded_pages()) != 40,
    reason=f"full recorded Marvel data set not found at {RECORDED}",
)
async def test_reproduces_all_40_recorded_pages(nursery: trio.Nursery) -> None:
    pages = recorded_pages()
    handle = await start(nursery, dataset=RECORDED / "characters.json")
    async with client(handle) as http:
        for path in pages:
            recorded = json.loads(path.read_text(encoding="utf-8"))["data"]
            offset = str(recorded["offset"])
            r = await http.get("/characters", params=signed({"limit": "50", "offset": offset}))
            assert r.status_code == 200
            served = r.json()["data"]
            for key in ("offset", "limit", "total", "count"):
                assert served[key] == recorded[key], f"{path.name}: {key}"
            assert served["results"] == recorded["results"], path.name
