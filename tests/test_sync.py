"""Change detection end to end: the daemon, the simulator as upstream, gRPC and HTTP clients.

A change the simulator announces by webhook shows through GetCharacter and through a
ListCharacters page cached before it, within a second; a change without webhook shows after
the next (triggered) poll; a new character appears in queries; forged, unsigned and
replayed webhooks are refused, a delivery sent twice is applied once; TriggerSync is for
admins; /readyz reports the first sync; searches are local and treat any text as data.

Rules: real servers on port 0; syncs are triggered (TriggerSync), never waited for by
time; waits are for observable conditions under ``trio.fail_after``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status

from marveld import cli
from marveld.domain.webhooks import SIGNATURE_HEADER, signature_header
from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from tests.aio import grpc_client
from tests.calls import TIMEOUT, list_characters, register_and_login, status_of
from tests.conftest import Clock, Running, make_settings, start_daemon
from tests.stores import open_store, rows_of
from tests.waiting import wait_until

pytestmark = pytest.mark.both_backends  # the service tests run on SQLite and PostgreSQL

SPIDER_MAN = 1009610
SECRET = "daemon-webhook-secret"
WEBHOOK_PATH = "/v1/webhooks/marvel"


async def make_admin(m: Running, email: str = "admin@example.com") -> dict[str, str]:
    auth = await register_and_login(m, email)
    async with open_store(m.settings) as store:
        assert (await store.users.set_role(email, "admin", datetime.now(UTC))).role == "admin"
    return auth


async def trigger_sync(m: Running, auth: dict[str, str]) -> pb.TriggerSyncResponse:
    async def go(channel: Channel) -> pb.TriggerSyncResponse:
        return await pb.AdminServiceStub(channel).trigger_sync(
            pb.TriggerSyncRequest(), metadata=auth, timeout=TIMEOUT
        )

    return await m.client.call(go)


async def get_character(m: Running, auth: dict[str, str], marvel_id: int) -> pb.Character:
    async def go(channel: Channel) -> pb.Character:
        return await pb.CharacterServiceStub(channel).get_character(
            pb.GetCharacterRequest(id=marvel_id), metadata=auth, timeout=TIMEOUT
        )

    return await m.client.call(go)


async def search(m: Running, auth: dict[str, str], text: str, **fields: Any) -> pb.CharacterPage:
    async def go(channel: Channel) -> pb.CharacterPage:
        return await pb.CharacterServiceStub(channel).search_characters(
            pb.SearchCharactersRequest(query=text, **fields), metadata=auth, timeout=TIMEOUT
        )

    return await m.client.call(go)


async def rows(m: Running, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` in the daemon's database (either backend; ``?`` placeholders)."""
    return await rows_of(m.settings, sql, *params)


async def sim_post(sim: SimHandle, path: str, body: dict[str, Any], **params: str) -> Any:
    async with httpx.AsyncClient(base_url=sim.url.removesuffix("/v1/public"), timeout=10) as http:
        r = await http.post(path, json=body, params=params)
    assert r.status_code in (200, 201), r.text
    return r.json()


async def post_webhook(
    m: Running, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.post(f"{m.http}{WEBHOOK_PATH}", content=body, headers=headers or {})


def signed(body: bytes, *, secret: str = SECRET, at: float | None = None) -> dict[str, str]:
    t = int(time.time() if at is None else at)
    return {SIGNATURE_HEADER: signature_header(secret, t, body)}


@pytest.fixture
async def hooked(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> AsyncIterator[Running]:
    """A daemon with a webhook secret, the simulator sending its webhooks to it."""
    settings = make_settings(tmp_path, sim.url, MARVELD_WEBHOOK_SECRET=SECRET, **database)
    endpoints = await start_daemon(nursery, settings, clock)
    sim.state.webhook_secret = SECRET
    sim.state.webhook_url = f"http://127.0.0.1:{endpoints.http_port}{WEBHOOK_PATH}"
    async with grpc_client(endpoints.grpc_port) as client:
        yield Running(settings, endpoints, sim, client)


@pytest.fixture
async def admin(hooked: Running) -> dict[str, str]:
    """An admin's token, after a first full sync."""
    auth = await make_admin(hooked)
    report = await trigger_sync(hooked, auth)
    assert (report.kind, report.added, report.pages_fetched) == ("bootstrap", 40, 1)
    return auth


async def test_a_webhook_change_shows_in_get_and_in_a_cached_list_within_a_second(
    hooked: Running, admin: dict[str, str]
) -> None:
    spiders = await list_characters(hooked, admin, name_starts_with="Spider")
    again = await list_characters(hooked, admin, name_starts_with="Spider")
    assert again.cache_status is pb.CacheStatus.HIT
    assert (await get_character(hooked, admin, SPIDER_MAN)).description != "Changed by a webhook."
    assert SPIDER_MAN in [c.id for c in spiders.characters]

    await sim_post(
        hooked.sim, f"/_sim/characters/{SPIDER_MAN}", {"description": "Changed by a webhook."}
    )

    async def visible() -> bool:
        got = await get_character(hooked, admin, SPIDER_MAN)
        listed = await list_characters(hooked, admin, name_starts_with="Spider")
        in_list = {c.id: c.description for c in listed.characters}
        return bool(got.description == in_list[SPIDER_MAN] == "Changed by a webhook.")

    await wait_until(visible, seconds=1.0, what="the change in GetCharacter and the list")
    hooked_events = "SELECT type FROM events WHERE correlation_id LIKE 'webhook:%'"
    assert await rows(hooked, hooked_events) == [("CharacterUpdated",)]
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{hooked.http}/metrics")).text
    assert 'marveld_webhook_deliveries_total{outcome="accepted"} 1.0' in metrics
    assert 'marveld_webhook_deliveries_total{outcome="applied"} 1.0' in metrics


async def test_two_changes_to_one_character_in_one_second_are_two_deliveries(
    hooked: Running, admin: dict[str, str]
) -> None:
    for text in ("First change.", "Second change."):
        await sim_post(hooked.sim, f"/_sim/characters/{SPIDER_MAN}", {"description": text})

    async def second_applied() -> bool:
        got = await get_character(hooked, admin, SPIDER_MAN)
        return bool(got.description == "Second change.")

    await wait_until(second_applied, seconds=2.0, what="the second change")
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{hooked.http}/metrics")).text
    assert 'marveld_webhook_deliveries_total{outcome="accepted"} 2.0' in metrics
    assert 'outcome="duplicate"' not in metrics


async def test_a_change_without_webhook_is_picked_up_by_the_next_poll(
    hooked: Running, admin: dict[str, str]
) -> None:
    hooked.sim.editor.update(SPIDER_MAN, {"description": "Quietly changed."}, notify=False)
    # Answered locally: the daemon does not know yet.
    assert (await get_character(hooked, admin, SPIDER_MAN)).description != "Quietly changed."
    poll = await trigger_sync(hooked, admin)
    assert (poll.kind, poll.added, poll.updated, poll.upstream_calls) == ("poll", 0, 1, 1)
    assert (await get_character(hooked, admin, SPIDER_MAN)).description == "Quietly changed."
    unchanged = await trigger_sync(hooked, admin)
    assert (unchanged.updated, unchanged.upstream_calls, unchanged.not_modified) == (0, 1, False)
    not_modified = await trigger_sync(hooked, admin)
    assert (not_modified.upstream_calls, not_modified.not_modified) == (1, True)
    assert await rows(hooked, "SELECT count(*) FROM events") == [(41,)]


async def test_a_new_character_appears_in_queries(hooked: Running, admin: dict[str, str]) -> None:
    before = await list_characters(hooked, admin, name_starts_with="Spider")
    created = await sim_post(
        hooked.sim, "/_sim/characters", {"name": "Spider-Hamster", "description": "Peter Porker."}
    )

    async def everywhere() -> bool:
        found = await search(hooked, admin, "porker")
        listed = await list_characters(hooked, admin, name_starts_with="Spider")
        return [c.id for c in found.characters] == [created["id"]] and created["id"] in [
            c.id for c in listed.characters
        ]

    await wait_until(everywhere, seconds=1.0, what="the new character in search and list")
    assert (await get_character(hooked, admin, created["id"])).name == "Spider-Hamster"
    after = await list_characters(hooked, admin, name_starts_with="Spider")
    assert after.total == before.total + 1


async def test_a_character_not_synced_yet_is_read_through(
    hooked: Running, admin: dict[str, str]
) -> None:
    created = hooked.sim.editor.add({"name": "Quiet Newcomer"}, notify=False)
    assert (await get_character(hooked, admin, created["id"])).name == "Quiet Newcomer"
    assert await rows(
        hooked,
        "SELECT correlation_id FROM events WHERE stream_id = ?",
        f"character-{created['id']}",
    ) == [(f"read-through:characters/{created['id']}",)]
    error = await status_of(hooked, _get(admin, 1))
    assert error.status is Status.NOT_FOUND


def _get(auth: dict[str, str], marvel_id: int) -> Any:
    async def go(channel: Channel) -> pb.Character:
        return await pb.CharacterServiceStub(channel).get_character(
            pb.GetCharacterRequest(id=marvel_id), metadata=auth, timeout=TIMEOUT
        )

    return go


async def test_forged_unsigned_and_replayed_webhooks_are_refused(
    hooked: Running, admin: dict[str, str]
) -> None:
    body = json.dumps({"type": "character.updated", "ids": [SPIDER_MAN]}).encode()
    hooked.sim.editor.update(SPIDER_MAN, {"description": "Changed quietly."}, notify=False)
    requests = hooked.sim.state.requests
    refusals = {
        "unsigned": {},
        "malformed": {SIGNATURE_HEADER: "v1=abc"},
        "forged": signed(body, secret="not the secret"),
        "stale": signed(body, at=time.time() - 301),
        "from the future": signed(body, at=time.time() + 301),
    }
    for name, headers in refusals.items():
        r = await post_webhook(hooked, body, headers)
        assert r.status_code == 401, name
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["title"] == "invalid signature"
    bad = b'{"type":"character.deleted","ids":[1]}'
    r = await post_webhook(hooked, bad, signed(bad))
    assert (r.status_code, r.json()["title"]) == (400, "invalid payload")
    r = await post_webhook(hooked, b"x" * 70_000, signed(b"x"))
    assert r.status_code == 413
    assert hooked.sim.state.requests == requests  # nothing fetched
    assert await rows(hooked, "SELECT count(*) FROM webhook_deliveries") == [(0,)]

    headers = signed(body)
    first = await post_webhook(hooked, body, headers)
    assert (first.status_code, first.json()) == (202, {"status": "accepted"})
    again = await post_webhook(hooked, body, headers)
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    applied = "SELECT count(*) FROM webhook_deliveries WHERE applied_at IS NOT NULL"

    async def delivered() -> bool:
        return await rows(hooked, applied) == [(1,)]

    await wait_until(delivered, what="the delivery applied")
    updated = "SELECT count(*) FROM events WHERE type = 'CharacterUpdated'"
    assert await rows(hooked, updated) == [(1,)]
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{hooked.http}/metrics")).text
    assert 'marveld_webhook_deliveries_total{outcome="refused"} 5.0' in metrics
    assert 'marveld_webhook_deliveries_total{outcome="duplicate"} 1.0' in metrics


async def test_without_a_secret_the_receiver_is_not_configured(marveld: Running) -> None:
    body = b'{"type":"character.added","ids":[1]}'
    r = await post_webhook(marveld, body, signed(body))
    assert r.status_code == 503
    assert r.json() == {
        "title": "webhooks not configured",
        "status": 503,
        "detail": "set MARVELD_WEBHOOK_SECRET",
    }


async def test_trigger_sync_is_for_admins(hooked: Running) -> None:
    user = await register_and_login(hooked, "user@example.com")

    def trigger(auth: dict[str, str] | None) -> Any:
        async def go(channel: Channel) -> pb.TriggerSyncResponse:
            return await pb.AdminServiceStub(channel).trigger_sync(
                pb.TriggerSyncRequest(), metadata=auth, timeout=TIMEOUT
            )

        return go

    denied = await status_of(hooked, trigger(user))
    assert denied.status is Status.PERMISSION_DENIED
    assert denied.message == "this call needs an admin account"
    assert (await status_of(hooked, trigger(None))).status is Status.UNAUTHENTICATED
    assert hooked.sim.state.requests == 0


async def test_trigger_sync_reports_an_upstream_failure(
    hooked: Running, admin: dict[str, str]
) -> None:
    hooked.sim.state.fail_rate = 1.0
    error = await status_of(hooked, _trigger(admin))
    assert error.status is Status.UNAVAILABLE


def _trigger(auth: dict[str, str]) -> Any:
    async def go(channel: Channel) -> pb.TriggerSyncResponse:
        return await pb.AdminServiceStub(channel).trigger_sync(
            pb.TriggerSyncRequest(), metadata=auth, timeout=TIMEOUT
        )

    return go


async def test_search_is_local_once_synced_and_any_text_is_data(
    hooked: Running, admin: dict[str, str]
) -> None:
    requests = hooked.sim.state.requests
    page = await search(hooked, admin, "  spider ", limit=5)
    assert page.limit == 5
    assert page.total > 5
    assert len(page.characters) == 5
    assert page.cache_status is pb.CacheStatus.HIT
    # description hits count too: "radioactive" appears in no name
    assert SPIDER_MAN in [c.id for c in (await search(hooked, admin, "radioactive")).characters]
    for hostile in ('"', "*", "AND", "OR NOT", "NEAR(", "NEAR(spider", "spi\x00der", '" OR 1=1 --'):
        await search(hooked, admin, hostile)  # never an error
    spider_nul = await search(hooked, admin, "\x00spider")
    assert spider_nul.total == (await search(hooked, admin, "spider")).total
    assert hooked.sim.state.requests == requests  # all answered locally
    empty = await status_of(hooked, _search(admin, " \x00 "))
    assert empty.status is Status.INVALID_ARGUMENT


def _search(auth: dict[str, str], text: str) -> Any:
    async def go(channel: Channel) -> pb.CharacterPage:
        return await pb.CharacterServiceStub(channel).search_characters(
            pb.SearchCharactersRequest(query=text), metadata=auth, timeout=TIMEOUT
        )

    return go


async def test_the_poller_bootstraps_on_start_while_serving_and_readyz_reports_it(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> None:
    sim.state.latency_ms = 300
    settings = make_settings(tmp_path, sim.url, MARVELD_POLLER_ENABLED="true", **database)
    endpoints = await start_daemon(nursery, settings, clock)
    url = f"http://127.0.0.1:{endpoints.http_port}/readyz"
    async with httpx.AsyncClient() as http:
        during = await http.get(url)
        assert during.status_code == 200  # serving during the first sync
        signals = {"signals": True} if "MARVELD_DATABASE_URL" in database else {}
        assert during.json() == {
            "status": "ready",
            "checks": {
                "database": True,
                "listeners": True,
                "breaker": True,
                "accepting": True,
                **signals,  # PostgreSQL: the other replicas are heard
                "first_sync": False,
            },
        }

        async def first_sync() -> bool:
            body = (await http.get(url)).json()
            return bool(body["checks"]["first_sync"])

        await wait_until(first_sync, what="/readyz first_sync true")
    (state,) = await rows_of(
        settings, "SELECT value FROM sync_state WHERE key = ?", "sync.bootstrap"
    )
    bootstrap = json.loads(state[0])
    assert bootstrap["bulk"] is True
    assert await rows_of(settings, "SELECT DISTINCT correlation_id FROM events") == [
        (f"bootstrap:{bootstrap['run_id']}",)
    ]


async def test_the_demo_simulator_sends_its_webhooks_to_the_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        tmp_path, "http://127.0.0.1:9/v1/public", MARVELD_WEBHOOK_SECRET="demo-secret"
    )
    with caplog.at_level(logging.INFO, logger="marveld"):
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(cli.serve, settings, demo=True))
            (sim_url,) = [
                m.split(" at ")[1].split(" ")[0] for m in caplog.messages if "stands in" in m
            ]
            assert any("sends its webhooks to http://127.0.0.1:" in m for m in caplog.messages)
            async with httpx.AsyncClient(base_url=sim_url.removesuffix("/v1/public")) as http:
                r = await http.post(f"/_sim/characters/{SPIDER_MAN}", json={"description": "Demo"})
            assert r.status_code == 200
            hooked = "SELECT count(*) FROM events WHERE correlation_id LIKE 'webhook:%'"

            async def received() -> bool:
                return await rows_of(settings, hooked) == [(1,)]

            await wait_until(received, what="the demo webhook")
            nursery.cancel_scope.cancel()
