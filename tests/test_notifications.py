"""Notifications end to end: the daemon, the simulator as upstream (changes announced by
signed webhooks or picked up by TriggerSync), real clients (a grpclib stream, trio-websocket,
ListNotifications).

Rules: real servers on port 0; changes are made through the simulator; waits are for
observable conditions under ``trio.fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from tests.aio import grpc_client
from tests.calls import TIMEOUT, register_and_login
from tests.conftest import Clock, Running, make_settings, start_daemon
from tests.notify_clients import grpc_stream, small_window_client, websocket, ws_next
from tests.test_sync import (
    SECRET,
    SPIDER_MAN,
    WEBHOOK_PATH,
    make_admin,
    rows,
    sim_post,
    trigger_sync,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.both_backends  # the service tests run on SQLite and PostgreSQL

HULK = 1009351


async def change(m: Running, marvel_id: int, description: str, *, webhook: bool = True) -> None:
    params = {} if webhook else {"webhook": "false"}
    await sim_post(m.sim, f"/_sim/characters/{marvel_id}", {"description": description}, **params)


async def list_notifications(
    m: Running, auth: dict[str, str], after: int = 0, limit: int | None = None
) -> pb.ListNotificationsResponse:
    async def go(channel: Channel) -> pb.ListNotificationsResponse:
        return await pb.NotificationServiceStub(channel).list_notifications(
            pb.ListNotificationsRequest(after_cursor=after, limit=limit),
            metadata=auth,
            timeout=TIMEOUT,
        )

    return await m.client.call(go)


def start(nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, **env: str) -> Any:
    """A daemon with ``env`` (the database's settings among them), the simulator's webhooks
    wired to it."""

    async def go() -> Running:
        settings = make_settings(tmp_path, sim.url, MARVELD_WEBHOOK_SECRET=SECRET, **env)
        endpoints = await start_daemon(nursery, settings, clock)
        sim.state.webhook_secret = SECRET
        sim.state.webhook_url = f"http://127.0.0.1:{endpoints.http_port}{WEBHOOK_PATH}"
        return Running(settings, endpoints, sim, None)  # type: ignore[arg-type]

    return go()


@pytest.fixture
async def notified(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> AsyncIterator[Running]:
    """A daemon with webhooks wired from the simulator, a first full sync done, fast
    heartbeats and small queues."""
    m: Running = await start(
        nursery,
        sim,
        tmp_path,
        clock,
        **database,
        MARVELD_NOTIFICATIONS_HEARTBEAT="0.2s",
        MARVELD_NOTIFICATIONS_QUEUE_SIZE="64",
    )
    async with grpc_client(m.endpoints.grpc_port) as client:
        m.client = client
        admin = await make_admin(m)
        await trigger_sync(m, admin)
        m.admin = admin  # type: ignore[attr-defined]
        yield m


async def test_the_bulk_import_notifies_nobody_and_a_change_reaches_both_channels_live(
    notified: Running,
) -> None:
    m = notified
    auth = await register_and_login(m)
    assert await rows(m, "SELECT count(*) FROM notifications") == [(0,)]  # 40 added, no one told
    async with (
        grpc_stream(m.client, auth) as stream,
        websocket(m.endpoints.http_port, **{"Authorization": auth["authorization"]}) as ws,
    ):
        beat = await stream.next(heartbeats=True)  # a heartbeat says the stream is live
        assert beat.heartbeat
        assert (await ws_next(ws, heartbeats=True))["heartbeat"]
        before = trio.current_time()
        await change(m, SPIDER_MAN, "Notified live.")
        note = await stream.next(seconds=1)
        message = await ws_next(ws, seconds=1)
        assert trio.current_time() - before < 1
    assert note.type is pb.NotificationType.CHARACTER_UPDATED
    assert (note.character.id, note.character.description) == (SPIDER_MAN, "Notified live.")
    assert note.correlation_id.startswith("webhook:")
    assert "description" in note.message
    assert note.event_id
    assert (message["cursor"], message["id"]) == (note.cursor, note.id)
    assert message["type"] == "CHARACTER_UPDATED"
    assert message["character"]["description"] == "Notified live."
    polled = await list_notifications(m, auth)
    assert [n.id for n in polled.notifications] == [note.id]
    assert polled.next_cursor == note.cursor

    async def sent() -> bool:
        sql = "SELECT sent_at IS NOT NULL FROM notifications WHERE id = ?"
        return await rows(m, sql, note.id) == [(True,)]

    await wait_until(sent, what="sent_at recorded")


async def test_reconnecting_with_the_cursor_gets_exactly_what_was_missed_in_order(
    notified: Running,
) -> None:
    m = notified
    auth = await register_and_login(m)
    async with grpc_stream(m.client, auth) as stream:
        await change(m, SPIDER_MAN, "First.")
        first = await stream.next()
    for marvel_id, text in ((HULK, "Missed one."), (SPIDER_MAN, "Missed two."), (HULK, "Three.")):
        await change(m, marvel_id, text, webhook=False)
        await trigger_sync(m, m.admin)  # type: ignore[attr-defined]
    async with grpc_stream(m.client, auth, after_cursor=first.cursor) as stream:
        missed = [await stream.next() for _ in range(3)]
        # Hulk: a webhook for Spider-Man in the same second as the first one would carry the
        # same signature, and the receiver would take it for a duplicate delivery.
        await change(m, HULK, "Live after the replay.")
        live = await stream.next()
    texts = [n.character.description for n in missed]
    assert texts == ["Missed one.", "Missed two.", "Three."]
    assert [n.cursor for n in missed] == sorted(n.cursor for n in missed)
    assert live.character.description == "Live after the replay."
    assert live.cursor > missed[-1].cursor
    async with websocket(
        m.endpoints.http_port,
        f"?after_cursor={first.cursor}&access_token={auth['authorization'][7:]}",
    ) as ws:
        over_ws = [await ws_next(ws) for _ in range(4)]
    assert [n["id"] for n in over_ws] == [n.id for n in [*missed, live]]
    polled = await list_notifications(m, auth, after=first.cursor)
    assert [n.id for n in polled.notifications] == [n.id for n in [*missed, live]]
    page = await list_notifications(m, auth, after=first.cursor, limit=2)
    assert [n.id for n in page.notifications] == [n.id for n in missed[:2]]
    assert page.next_cursor == missed[1].cursor


async def test_a_slow_consumer_is_evicted_with_its_cursor_while_a_fast_one_keeps_up(
    notified: Running,
) -> None:
    m = notified
    auth = await register_and_login(m)
    long = "x" * 3000  # ~3 KB a notification: the slow stream's 64 KiB window fills fast
    got: list[pb.Notification] = []
    async with (
        small_window_client(m.endpoints.grpc_port) as other,
        grpc_stream(other, auth, read=False) as slow,
        grpc_stream(m.client, auth) as fast,
    ):
        assert (await fast.next(heartbeats=True)).heartbeat
        assert slow.error is None
        for round_ in range(4):
            for i in range(30):
                await sim_post(
                    m.sim,
                    "/_sim/characters",
                    {"name": f"Extra {round_}-{i}", "description": long},
                    webhook="false",
                )
            await trigger_sync(m, m.admin)  # type: ignore[attr-defined]
            got += [await fast.next() for _ in range(30)]
        assert len({n.id for n in got}) == 120
        evicted = 'marveld_notification_subscribers_evicted_total{channel="grpc"} 1.0'
        assert evicted in await m.metrics()
        slow.resume()  # it reads again: what was buffered, then the status
        assert isinstance(await slow.ended(seconds=10), GRPCError)
    assert isinstance(slow.error, GRPCError)
    assert slow.error.status is Status.RESOURCE_EXHAUSTED
    assert "after_cursor=" in (slow.error.message or "")
    assert slow.trailers.get("resume-cursor", "").isdigit()


async def test_missing_tokens_are_refused(notified: Running) -> None:
    m = notified
    async with grpc_stream(m.client, {}) as stream:
        error = await stream.ended()
    assert isinstance(error, GRPCError)
    assert error.status is Status.UNAUTHENTICATED


@pytest.fixture
async def short_retention(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> AsyncIterator[Running]:
    m: Running = await start(
        nursery,
        sim,
        tmp_path,
        clock,
        **database,
        MARVELD_NOTIFICATIONS_RETENTION="1h",
        MARVELD_NOTIFICATIONS_HEARTBEAT="0.2s",
        MARVELD_NOTIFICATIONS_SWEEP_INTERVAL="0.05s",
        MARVELD_AUTH_TOKEN_TTL="1d",
    )
    async with grpc_client(m.endpoints.grpc_port) as client:
        m.client = client
        admin = await make_admin(m)
        await trigger_sync(m, admin)
        yield m


async def test_a_cursor_older_than_retention_is_failed_precondition(
    short_retention: Running, clock: Clock
) -> None:
    m = short_retention
    auth = await register_and_login(m)
    await change(m, SPIDER_MAN, "Soon past retention.")

    async def cursors() -> list[int]:
        return [cursor for (cursor,) in await rows(m, "SELECT cursor FROM notifications")]

    async def count(wanted: int) -> bool:
        return len(await cursors()) == wanted

    await wait_until(partial(count, 2), what="2 notifications")
    cursor = min(await cursors())
    clock.advance(2 * 3600)
    await wait_until(partial(count, 0), what="the notifications swept")
    async with grpc_stream(m.client, auth, after_cursor=cursor - 1) as stream:
        error = await stream.ended()
    assert isinstance(error, GRPCError)
    assert error.status is Status.FAILED_PRECONDITION
    with pytest.raises(GRPCError) as polled:
        await list_notifications(m, auth, after=cursor - 1)
    assert polled.value.status is Status.FAILED_PRECONDITION
    # From the floor itself, or from 0 (everything retained), is fine.
    async with grpc_stream(m.client, auth, after_cursor=cursor) as stream:
        assert (await stream.next(heartbeats=True)).heartbeat
    assert (await list_notifications(m, auth, after=0)).next_cursor == cursor


async def test_a_client_that_resets_its_stream_is_unsubscribed_on_the_server(
    notified: Running,
) -> None:
    m = notified
    auth = await register_and_login(m)
    gauge = 'marveld_notification_subscribers{channel="grpc"}'

    async def subscribers(count: int) -> bool:
        return f"{gauge} {count}.0" in await m.metrics()

    async with small_window_client(m.endpoints.grpc_port) as other:
        async with grpc_stream(other, auth) as stream:
            assert (await stream.next(heartbeats=True)).heartbeat  # subscribed and live
            await wait_until(lambda: subscribers(1), what="one gRPC subscriber")
            # The client goes away mid-stream: its connection closes under the stream.
            await trio.to_thread.run_sync(other.run_sync, other.channel.close)
            ended = await stream.ended()
            assert not isinstance(ended, pb.Notification)
        await wait_until(lambda: subscribers(0), what="the reset subscriber removed")
    # The server still serves: a new subscriber is told of the next change.
    async with grpc_stream(m.client, auth) as stream:
        assert (await stream.next(heartbeats=True)).heartbeat
        await change(m, SPIDER_MAN, "After a reset.")
        assert (await stream.next()).character.description == "After a reset."
