"""The simulator's injected faults, as a client sees them on the wire: one test per fault
kind, the plan (script before rates), ``--fault`` and ``PUT /_sim/faults`` with their
errors. Same rules as test_sim.py: a real simulator on port 0, httpx over loopback."""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx
import pytest
import trio

from marveld.sim import SimHandle, add_sim_arguments, options_from_args
from marveld.sim.faults import Fault, FaultPlan
from tests.test_sim import SPIDER_MAN, client, signed, start


def control(handle: SimHandle) -> str:
    return handle.url.removesuffix("/v1/public") + "/_sim/faults"


async def put_plan(handle: SimHandle, plan: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.put(control(handle), json=plan)


async def one_call(handle: SimHandle, **headers: str) -> httpx.Response:
    async with client(handle, headers=headers) as http:
        return await http.get(f"/characters/{SPIDER_MAN}", params=signed())


@pytest.fixture
async def simulator(nursery: trio.Nursery) -> SimHandle:
    return await start(nursery)


@pytest.mark.parametrize(
    ("fault", "status", "retry_after"),
    [("500", 500, None), ("503", 503, "1"), ("429", 429, "1"), ("429-bare", 429, None)],
)
async def test_error_answers(
    simulator: SimHandle, fault: str, status: int, retry_after: str | None
) -> None:
    assert (await put_plan(simulator, {"script": [fault]})).status_code == 200
    answer = await one_call(simulator)
    assert answer.status_code == status
    assert answer.headers.get("retry-after") == retry_after
    assert answer.json()  # a JSON body, in Marvel's shapes
    assert (await one_call(simulator)).status_code == 200  # the script is used up


async def test_a_reset_is_a_transport_error(simulator: SimHandle) -> None:
    await put_plan(simulator, {"script": ["reset"]})
    with pytest.raises(httpx.TransportError):
        await one_call(simulator)


async def test_a_timeout_answers_nothing_for_hang_seconds(simulator: SimHandle) -> None:
    await put_plan(simulator, {"script": ["timeout"], "hang_seconds": 30})
    async with client(simulator) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"/characters/{SPIDER_MAN}", params=signed(), timeout=0.2)
    await put_plan(simulator, {"script": ["timeout"], "hang_seconds": 0})
    assert (await one_call(simulator)).status_code == 504


async def test_a_slow_body_is_the_real_answer_in_pieces(simulator: SimHandle) -> None:
    await put_plan(simulator, {"script": ["slow-body"], "slow_seconds": 0.05})
    chunks = 0
    async with client(simulator) as http:
        params = signed()
        async with http.stream("GET", f"/characters/{SPIDER_MAN}", params=params) as answer:
            body = b""
            async for chunk in answer.aiter_bytes():
                body += chunk
                chunks += 1
    assert chunks > 1
    assert json.loads(body)["data"]["results"][0]["id"] == SPIDER_MAN


async def test_a_truncated_body_is_half_a_json_document(simulator: SimHandle) -> None:
    whole = await one_call(simulator)
    await put_plan(simulator, {"script": ["truncated"]})
    cut = await one_call(simulator)
    assert cut.status_code == 200
    assert len(cut.content) == len(whole.content) // 2
    assert int(cut.headers["content-length"]) == len(cut.content)
    with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
        json.loads(cut.content)


@pytest.mark.parametrize(
    ("fault", "media_type"),
    [("malformed", "application/json"), ("wrong-shape", "application/json")],
)
async def test_bodies_that_are_not_a_character_page(
    simulator: SimHandle, fault: str, media_type: str
) -> None:
    await put_plan(simulator, {"script": [fault]})
    answer = await one_call(simulator)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith(media_type)
    if fault == "malformed":
        with pytest.raises(ValueError, match="Expecting property name"):
            answer.json()
    else:
        assert answer.json()["data"]["results"] == [{"id": "x"}]


async def test_a_wrong_content_type_is_an_html_page(simulator: SimHandle) -> None:
    await put_plan(simulator, {"script": ["wrong-type"]})
    answer = await one_call(simulator)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.text.startswith("<html>")


async def test_a_lying_etag_says_not_modified_to_any_conditional_request(
    simulator: SimHandle,
) -> None:
    await put_plan(simulator, {"rates": {"lying-etag": 1.0}})
    plain = await one_call(simulator)
    assert plain.status_code == 200  # unconditional requests get the real answer
    lie = await one_call(simulator, **{"If-None-Match": '"no-such-etag"'})
    assert lie.status_code == 304
    assert lie.headers["etag"] == '"no-such-etag"'


async def test_the_plan_reports_what_it_injected(simulator: SimHandle) -> None:
    await put_plan(simulator, {"script": ["500", None, "503"]})
    statuses = [(await one_call(simulator)).status_code for _ in range(4)]
    assert statuses == [500, 200, 503, 200]
    async with httpx.AsyncClient() as http:
        plan = (await http.get(control(simulator))).json()
    assert plan["injected"] == {"500": 1, "503": 1}
    assert plan["script"] == []
    stats = simulator.state.stats()
    assert stats["failed"] == 2


async def test_rates_are_drawn_per_call(nursery: trio.Nursery) -> None:
    handle = await start(nursery, faults=((Fault.UNAVAILABLE, 0.5),), seed=3)
    statuses = [(await one_call(handle)).status_code for _ in range(40)]
    assert set(statuses) == {200, 503}


@pytest.mark.parametrize(
    ("plan", "named"),
    [
        ({"rates": {"explode": 1}}, "unknown fault 'explode'"),
        ({"rates": {"500": 2}}, "rate of fault 500"),
        ({"rates": {"500": 0.6, "503": 0.6}}, "more than 1"),
        ({"script": "500"}, "script"),
        ({"hang_seconds": "long"}, "hang_seconds"),
        ({"slow_seconds": -1}, "slow_seconds"),
        ({"rate": {}}, "unknown field(s): rate"),
        ([], "JSON object"),
    ],
)
async def test_a_bad_plan_is_a_400_naming_the_field(
    simulator: SimHandle, plan: Any, named: str
) -> None:
    answer = await put_plan(simulator, plan)
    assert answer.status_code == 400
    assert named in answer.json()["status"]
    assert (await one_call(simulator)).status_code == 200  # the old plan stays


def test_the_fault_option() -> None:
    parser = argparse.ArgumentParser()
    add_sim_arguments(parser)
    args = parser.parse_args(["--fault", "timeout=0.1", "--fault", "lying-etag=0.2"])
    options = options_from_args(args, {})
    assert options.faults == ((Fault.TIMEOUT, 0.1), (Fault.LYING_ETAG, 0.2))
    for bad, named in (("timeout", "KIND=RATE"), ("nope=0.1", "unknown fault"), ("500=x", "500")):
        with pytest.raises(ValueError, match=named):
            options_from_args(parser.parse_args(["--fault", bad]), {})
    with pytest.raises(ValueError, match="more than 1"):
        options_from_args(parser.parse_args(["--fail-rate", "0.5", "--fault", "500=0.6"]), {})


def test_plans_round_trip_through_json() -> None:
    plan = FaultPlan.from_json({"rates": {"reset": 0.25}, "script": ["timeout", None]})
    assert FaultPlan.from_json({k: v for k, v in plan.to_json().items() if k != "injected"}) == plan
