"""The simulator's webhook simulation: ``POST /_sim/characters[/{id}]`` change characters
the Marvel endpoints then serve (new ``modified``, new etags), each change sends a signed
webhook unless ``?webhook=false``, a receiver that is down costs a warning only, and
``churn`` changes characters by itself.

Same rules as test_sim.py: real servers on port 0, httpx over loopback; waits are for
observable conditions, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trio

from marveld.domain.characters import Character, parse_marvel_time
from marveld.domain.webhooks import SIGNATURE_HEADER, WebhookPayload, signature_header, verify
from marveld.sim import SimHandle, SimState
from marveld.sim.catalogue import Catalogue
from marveld.sim.state import WEBHOOK_QUEUE
from marveld.sim.webhooks import queue_webhook
from marveld.upstream import DeliveryFailed, WebhookSender
from tests.test_sim import OPTIONS, SPIDER_MAN, client, signed, start
from tests.waiting import Receiver, wait_until

SECRET = "sim-webhook-secret"


def sim_root(handle: SimHandle) -> str:
    return handle.url.removesuffix("/v1/public")


async def post(handle: SimHandle, path: str, body: Any, **params: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim_root(handle), timeout=10) as http:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await http.post(path, content=content, params=params)


async def fetch(handle: SimHandle, character_id: int) -> dict[str, Any]:
    async with client(handle) as http:
        r = await http.get(f"/characters/{character_id}", params=signed())
    assert r.status_code == 200, r.text
    character: dict[str, Any] = r.json()["data"]["results"][0]
    return character


async def with_receiver(nursery: trio.Nursery, status: int = 202) -> tuple[SimHandle, Receiver]:
    receiver = await Receiver(status).start(nursery)
    handle = await start(nursery, webhook_url=receiver.url, webhook_secret=SECRET)
    return handle, receiver


def genuine(received: Any) -> WebhookPayload:
    """The payload of a delivery whose signature checks out with the shared secret."""
    verify(SECRET, received.headers.get(SIGNATURE_HEADER.lower()), received.body, datetime.now(UTC))
    assert received.headers["content-type"] == "application/json"
    return WebhookPayload.parse(received.body)


async def test_an_update_changes_the_character_modified_and_etag(nursery: trio.Nursery) -> None:
    handle, receiver = await with_receiver(nursery)
    async with client(handle) as http:
        before = await http.get("/characters", params=signed({"nameStartsWith": "Spider"}))
    r = await post(handle, f"/_sim/characters/{SPIDER_MAN}", {"description": "Friendly."})
    assert r.status_code == 200
    answered = r.json()
    assert answered["description"] == "Friendly."
    assert answered["id"] == SPIDER_MAN
    modified = parse_marvel_time(answered["modified"])
    assert modified is not None
    assert abs(modified - datetime.now(UTC)) < timedelta(seconds=5)
    assert answered["modified"].endswith("+0000")
    assert await fetch(handle, SPIDER_MAN) == answered
    async with client(handle) as http:
        after = await http.get("/characters", params=signed({"nameStartsWith": "Spider"}))
        newest = await http.get(
            "/characters", params=signed({"orderBy": "-modified", "limit": "1"})
        )
        unchanged = await http.get(
            "/characters",
            params=signed({"nameStartsWith": "Spider"}),
            headers={"If-None-Match": before.headers["etag"]},
        )
    assert after.json()["etag"] != before.json()["etag"]
    assert unchanged.status_code == 200  # the old etag no longer matches
    assert newest.json()["data"]["results"][0]["id"] == SPIDER_MAN
    payload = genuine(await receiver.next())
    assert (payload.type, payload.ids) == ("character.updated", (SPIDER_MAN,))
    assert payload.occurred_at is not None
    assert handle.state.changes == 1
    await wait_until(lambda: handle.state.webhooks_sent == 1)


async def test_an_addition_answers_the_new_character_and_is_listed(nursery: trio.Nursery) -> None:
    handle, receiver = await with_receiver(nursery)
    r = await post(handle, "/_sim/characters", {"name": "Spider-Hamster", "description": "Squeak."})
    assert r.status_code == 201
    created = r.json()
    assert created["id"] == 1017604  # one more than the highest id of the slice
    assert created["name"] == "Spider-Hamster"
    assert Character.from_marvel(created).description == "Squeak."
    assert await fetch(handle, created["id"]) == created
    async with client(handle) as http:
        r = await http.get("/characters", params=signed({"nameStartsWith": "spider-hamster"}))
    assert [c["id"] for c in r.json()["data"]["results"]] == [created["id"]]
    assert r.json()["data"]["total"] == 1
    payload = genuine(await receiver.next())
    assert (payload.type, payload.ids) == ("character.added", (created["id"],))


async def test_webhook_false_changes_without_sending(nursery: trio.Nursery) -> None:
    handle, receiver = await with_receiver(nursery)
    quiet = await post(handle, f"/_sim/characters/{SPIDER_MAN}", {"name": "Quiet"}, webhook="false")
    assert quiet.status_code == 200
    loud = await post(handle, "/_sim/characters", {"name": "Loud"})
    # Webhooks go out in order: the first one to arrive is the second change's.
    payload = genuine(await receiver.next())
    assert payload.ids == (loud.json()["id"],)
    assert receiver.pending() == 0
    assert handle.state.changes == 2


@pytest.mark.parametrize(
    ("path", "body", "status", "text"),
    [
        (f"/_sim/characters/{SPIDER_MAN}", {"id": 5}, 400, "cannot set id"),
        (f"/_sim/characters/{SPIDER_MAN}", {"modified": "x"}, 400, "cannot set modified"),
        (f"/_sim/characters/{SPIDER_MAN}", ["x"], 400, "JSON object"),
        (f"/_sim/characters/{SPIDER_MAN}", b"{nope", 400, "not JSON"),
        (f"/_sim/characters/{SPIDER_MAN}", b"x" * 70000, 400, "bytes"),
        (f"/_sim/characters/{SPIDER_MAN}", {"name": " "}, 400, "name"),
        (f"/_sim/characters/{SPIDER_MAN}", {"description": 5}, 400, "not a valid character"),
        (f"/_sim/characters/{SPIDER_MAN}", {"thumbnail": "x"}, 400, "not a valid character"),
        ("/_sim/characters/1", {"name": "x"}, 404, "couldn't find"),
        ("/_sim/characters/abc", {"name": "x"}, 404, "couldn't find"),
        ("/_sim/characters", {"description": "no name"}, 400, "needs a name"),
        ("/_sim/characters", {"name": "X", "urls": 5}, 400, "not a valid character"),
    ],
)
async def test_bad_changes_are_refused_and_change_nothing(
    nursery: trio.Nursery, path: str, body: Any, status: int, text: str
) -> None:
    handle = await start(nursery)
    before = await fetch(handle, SPIDER_MAN)
    r = await post(handle, path, body)
    assert r.status_code == status
    assert text in r.json()["status"]
    assert await fetch(handle, SPIDER_MAN) == before
    assert handle.state.changes == 0


async def test_a_receiver_that_is_down_costs_a_warning_only(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    handle = await start(nursery, webhook_url=dead, webhook_secret=SECRET)
    with caplog.at_level(logging.WARNING, logger="marveld.sim"), trio.fail_after(2):
        r = await post(handle, f"/_sim/characters/{SPIDER_MAN}", {"description": "x"})
    assert r.status_code == 200  # answered before (and whatever) the webhook does
    await wait_until(lambda: handle.state.webhooks_failed == 1, what="the webhook gave up")
    assert any("webhook not delivered" in m for m in caplog.messages)
    assert (await fetch(handle, SPIDER_MAN))["description"] == "x"


@pytest.mark.parametrize(("status", "attempts"), [(401, 1), (503, 3)])
async def test_a_refusal_is_not_retried_and_a_server_error_is(
    nursery: trio.Nursery, status: int, attempts: int
) -> None:
    handle, receiver = await with_receiver(nursery, status=status)
    await post(handle, f"/_sim/characters/{SPIDER_MAN}", {"description": "x"})
    bodies = [(await receiver.next()).body for _ in range(attempts)]
    await wait_until(lambda: handle.state.webhooks_failed == 1)
    assert receiver.pending() == 0
    assert len(set(bodies)) == 1  # the same delivery each time


async def test_no_secret_no_webhook(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    handle, _ = await with_receiver(nursery)
    handle.state.webhook_secret = None
    with caplog.at_level(logging.WARNING, logger="marveld.sim"):
        await post(handle, f"/_sim/characters/{SPIDER_MAN}", {"description": "x"})
        await wait_until(lambda: handle.state.webhooks_failed == 1)
    assert any("no webhook_url or webhook_secret" in m for m in caplog.messages)
    handle.state.webhook_url = None
    assert not queue_webhook(handle.state, "character.updated", [1], datetime.now(UTC))


async def test_churn_changes_characters_and_sends_webhooks(nursery: trio.Nursery) -> None:
    receiver = await Receiver().start(nursery)
    handle = await start(nursery, webhook_url=receiver.url, webhook_secret=SECRET, churn=6000)
    payloads = [genuine(await receiver.next()) for _ in range(3)]
    assert all(p.type in ("character.added", "character.updated") for p in payloads)
    assert handle.state.changes >= 3
    changed = await fetch(handle, payloads[0].ids[0])
    assert parse_marvel_time(changed["modified"]) is not None


def test_a_full_webhook_queue_drops_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    options = dataclasses.replace(OPTIONS, webhook_url="http://127.0.0.1:9/", webhook_secret="s")
    state = SimState(Catalogue([]), options)
    now = datetime.now(UTC)
    for n in range(WEBHOOK_QUEUE):
        assert queue_webhook(state, "character.updated", [n + 1], now)
    with caplog.at_level(logging.WARNING, logger="marveld.sim"):
        assert not queue_webhook(state, "character.updated", [1], now)
    assert state.webhooks_failed == 1
    assert "webhook queue full" in caplog.text


async def test_the_sender_translates_httpx_errors() -> None:
    def timing_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with WebhookSender.open(transport=httpx.MockTransport(timing_out)) as sender:
        with pytest.raises(DeliveryFailed, match="timed out"):
            await sender.send("http://127.0.0.1:9/hook", b"{}", secret="s", timestamp=1)
        with pytest.raises(DeliveryFailed, match="is not a URL"):
            await sender.send("http://[::1/hook", b"{}", secret="s", timestamp=1)

    seen: list[httpx.Request] = []

    def answering(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with WebhookSender.open(transport=httpx.MockTransport(answering)) as sender:
        assert (
            await sender.send("http://hooks.example/in", b'{"a":1}', secret="s", timestamp=7) == 204
        )
    (request,) = seen
    assert request.headers["host"] == "hooks.example"
    assert request.headers["content-length"] == "7"
    assert request.headers[SIGNATURE_HEADER] == signature_header("s", 7, b'{"a":1}')


async def test_a_client_that_hangs_up_mid_body_changes_nothing_and_logs_no_error(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    simulator = await start(nursery)
    before = await fetch(simulator, SPIDER_MAN)
    with caplog.at_level(logging.DEBUG):
        stream = await trio.open_tcp_stream("127.0.0.1", simulator.port)
        head = f"POST /_sim/characters/{SPIDER_MAN} HTTP/1.1\r\nhost: sim\r\n"
        await stream.send_all(f"{head}content-length: 100\r\n\r\n{{".encode())
        await stream.aclose()  # 99 bytes short

        def refused() -> bool:
            return any("hung up before its body" in m for m in caplog.messages)

        await wait_until(refused)
    assert await fetch(simulator, SPIDER_MAN) == before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
