"""The simulator as a test and demo upstream: daily quota, injected failures and latency
(changeable while it runs), ``/_sim/stats``, the generated catalogue, and start-up.

Same rules as test_sim.py: a real simulator on port 0, httpx over loopback, no sleeps; time
is only ever bounded from below.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trio

from marveld.sim import DatasetError, SimHandle, SimOptions, run_sim
from tests.test_sim import PUBLIC, SPIDER_MAN, client, signed, start

INTERNAL_ERROR = {"code": 500, "status": "Internal Server Error"}


async def outcome(http: httpx.AsyncClient) -> str:
    """``ok``, ``error`` (Marvel's 500) or ``reset`` (a transport error) for one call."""
    try:
        r = await http.get(f"/characters/{SPIDER_MAN}", params=signed())
    except httpx.TransportError:
        return "reset"
    if r.status_code == 500:
        assert r.json() == INTERNAL_ERROR
        return "error"
    assert r.status_code == 200, r.text
    return "ok"


async def stats(handle: SimHandle) -> dict[str, int]:
    async with httpx.AsyncClient() as http:
        r = await http.get(handle.url.removesuffix("/v1/public") + "/_sim/stats")
    assert r.status_code == 200
    body: dict[str, int] = r.json()
    return body


# --- daily quota ---------------------------------------------------------------------------------


async def test_over_the_daily_limit_is_a_429_until_utc_midnight(nursery: trio.Nursery) -> None:
    sim = await start(nursery, daily_limit=2)
    async with client(sim) as http:
        assert [await outcome(http) for _ in range(2)] == ["ok", "ok"]
        for _ in range(2):
            r = await http.get("/characters", params=signed())
            assert r.status_code == 429
            assert r.json() == {
                "code": "RequestThrottled",
                "message": "You have exceeded your rate limit.  Please try again later.",
            }
            now = datetime.now(UTC)
            midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
            expected = math.ceil((midnight - now).total_seconds())
            assert abs(int(r.headers["retry-after"]) - expected) <= 2
        # Calls over the limit still count against the key.
        assert sim.state.quota.used(PUBLIC) == 4
        assert await stats(sim) == {"requests": 4, "served": 2, "throttled": 2, "failed": 0}
        # A new UTC day, a new budget.
        sim.state.quota.clock = lambda: datetime.now(UTC) + timedelta(days=1)
        assert await outcome(http) == "ok"
        assert sim.state.quota.used(PUBLIC) == 1


async def test_refused_credentials_do_not_spend_the_budget(nursery: trio.Nursery) -> None:
    sim = await start(nursery, daily_limit=1)
    async with client(sim) as http:
        r = await http.get("/characters", params=signed(private="wrong"))
        assert r.status_code == 401
        assert await outcome(http) == "ok"
    assert sim.state.quota.used(PUBLIC) == 1


# --- injected failures and latency ---------------------------------------------------------------


async def test_fail_rate_1_answers_500s_and_drops_connections(nursery: trio.Nursery) -> None:
    sim = await start(nursery, fail_rate=1.0)
    async with client(sim) as http:
        seen = [await outcome(http) for _ in range(16)]
    assert set(seen) == {"error", "reset"}
    assert await stats(sim) == {"requests": 16, "served": 0, "throttled": 0, "failed": 16}


async def test_fail_rate_can_change_while_running(sim_fail_free: SimHandle) -> None:
    async with client(sim_fail_free) as http:
        assert {await outcome(http) for _ in range(16)} == {"ok"}
        sim_fail_free.state.fail_rate = 1.0
        assert "ok" not in {await outcome(http) for _ in range(4)}
        sim_fail_free.state.fail_rate = 0.0
        assert await outcome(http) == "ok"


@pytest.fixture
async def sim_fail_free(nursery: trio.Nursery) -> SimHandle:
    return await start(nursery, fail_rate=0.0)


async def test_failures_are_deterministic_for_a_seed(nursery: trio.Nursery) -> None:
    runs = []
    for _ in range(2):
        sim = await start(nursery, fail_rate=0.5, seed=7)
        async with client(sim) as http:
            runs.append([await outcome(http) for _ in range(12)])
    assert runs[0] == runs[1]
    assert "ok" in runs[0]
    assert {"error", "reset"} & set(runs[0])


async def test_latency_is_added_to_character_calls(nursery: trio.Nursery) -> None:
    sim = await start(nursery, latency_ms=120)
    async with client(sim) as http:
        began = trio.current_time()
        assert await outcome(http) == "ok"
        assert trio.current_time() - began >= 0.12
        sim.state.latency_ms = 60
        began = trio.current_time()
        r = await http.get("/characters", params=signed(private="wrong"))
        assert r.status_code == 401
        assert trio.current_time() - began >= 0.06


# --- stats ---------------------------------------------------------------------------------------


async def test_stats_count_every_character_call_and_need_no_auth(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with client(sim) as http:
        await http.get("/characters", params=signed())  # served
        await http.get("/characters")  # refused: no key
        await http.get("/characters", params=signed({"limit": "500"}))  # refused: 409
        await http.get("/characters/1", params=signed())  # 404
        await http.get("/comics", params=signed())  # not a character call
    assert await stats(sim) == {"requests": 4, "served": 1, "throttled": 0, "failed": 0}
    assert sim.state.requests == 4


# --- the generated catalogue ---------------------------------------------------------------------


async def test_without_a_dataset_a_generated_catalogue_is_served(nursery: trio.Nursery) -> None:
    sim = await start(nursery, dataset=None)
    async with client(sim) as http:
        r = await http.get(f"/characters/{SPIDER_MAN}", params=signed())
        assert r.json()["data"]["results"][0]["name"] == "Spider-Man"
        page = (await http.get("/characters", params=signed({"limit": "100"}))).json()["data"]
        assert page["total"] == 1500
        spiders = await http.get("/characters", params=signed({"nameStartsWith": "Spider"}))
        found = [c["name"] for c in spiders.json()["data"]["results"]]
        assert len(found) >= 5
        assert found[0] == "Spider-Man"
        irons = await http.get("/characters", params=signed({"nameStartsWith": "iron"}))
        assert irons.json()["data"]["total"] >= 5
        oldest = await http.get(
            "/characters", params=signed({"orderBy": "modified", "limit": "100"})
        )
        modified = [c["modified"] for c in oldest.json()["data"]["results"]]
        assert modified[0] == "-0001-11-30T00:00:00-0500"
        assert "1969-12-31T19:00:00-0500" in modified
    character = page["results"][0]
    assert list(character) == [
        "id", "name", "description", "modified", "thumbnail", "resourceURI",
        "comics", "series", "stories", "events", "urls",
    ]  # fmt: skip
    assert character["id"] >= 1009000
    assert character["comics"]["returned"] == len(character["comics"]["items"]) <= 20


async def test_the_generated_catalogue_depends_only_on_the_seed(nursery: trio.Nursery) -> None:
    etags = []
    for seed in (3, 3, 4):
        sim = await start(nursery, dataset=None, seed=seed)
        async with client(sim) as http:
            r = await http.get("/characters", params=signed({"limit": "100", "offset": "700"}))
            etags.append(r.json()["etag"])
    assert etags[0] == etags[1] != etags[2]


# --- start-up ------------------------------------------------------------------------------------


async def test_start_up_is_logged_with_the_url(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="marveld.sim"):
        sim = await start(nursery)
    assert sim.url == f"http://127.0.0.1:{sim.port}/v1/public"
    assert f"marveld sim serving 40 characters on {sim.url}" in caplog.messages


async def test_a_bad_dataset_stops_start_up(nursery: trio.Nursery, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        await nursery.start(run_sim, SimOptions(dataset=tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "7", "name": "X", "modified": ""}]))
    with pytest.raises(DatasetError, match=r"bad.json\[0\]: id '7' is not an integer"):
        await nursery.start(run_sim, SimOptions(dataset=tmp_path / "bad.json"))
