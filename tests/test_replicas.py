"""Three marveld replicas on one PostgreSQL database behave as one daemon.

Each test starts 3 real ``marveld serve`` processes (tests/replicas.py) on their own
ports, one PostgreSQL database and the test's simulator, talks to them with real gRPC and
WebSocket clients, and kills every process it started on the way out. Waits are for what
a client can observe, under a bound; no test asserts on a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psycopg
import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from trio_websocket import ConnectionClosed, HandshakeError

from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from tests.calls import list_characters, login, register_and_login, status_of
from tests.notify_clients import websocket, ws_next
from tests.replicas import Replica, cluster, leaders, subscribed
from tests.test_notifications import HULK, change
from tests.test_notify_crash import CAPTAIN_AMERICA
from tests.test_sync import SECRET, SPIDER_MAN, make_admin, post_webhook, signed, trigger_sync
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(180)


async def test_one_replica_leads_polls_for_all_and_another_takes_over_when_it_is_killed(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    async with cluster(tmp_path, sim, postgres_url, MARVELD_POLLER_ENABLED="true") as replicas:
        await wait_until(lambda: _count_leaders(replicas, 1), seconds=10, what="exactly one leader")
        (leader,) = await leaders(replicas)
        # The leader's poller runs the first sync; nobody else asks the upstream.
        await wait_until(lambda: _synced(leader), seconds=30, what="the leader's first sync")
        assert sim.state.requests == 1  # one page of 40 characters, once for the cluster
        runs = [await r.metric("marveld_sync_runs_total", _BOOTSTRAP) for r in replicas]
        assert sorted(runs) == [0.0, 0.0, 1.0]

        await leader.kill()
        await wait_until(lambda: _count_leaders(replicas, 1), seconds=10, what="a new leader")
        (successor,) = await leaders(replicas)
        assert successor is not leader
        assert "this replica is the leader" in successor.log.read_text()


_BOOTSTRAP = 'kind="bootstrap",outcome="changed"'


async def _count_leaders(replicas: list[Replica], n: int) -> bool:
    return len(await leaders(replicas)) == n


async def _synced(replica: Replica) -> bool:
    return await replica.metric("marveld_sync_runs_total", _BOOTSTRAP) == 1.0


async def test_a_change_committed_on_one_replica_is_not_served_stale_by_the_others(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    async with cluster(tmp_path, sim, postgres_url) as (a, b, c):
        admin = await make_admin(a.m)
        await trigger_sync(a.m, admin)
        auth = await register_and_login(b.m, "reader@example.com")
        for r in (b, c):  # the list is in each one's memory tier: a hit the second time
            await list_characters(r.m, auth, name_starts_with="Hulk")
            page = await list_characters(r.m, auth, name_starts_with="Hulk")
            assert page.cache_status == pb.CacheStatus.HIT
        await change(a.m, HULK, "Changed through replica r1.", webhook=False)
        report = await trigger_sync(a.m, admin)
        assert report.updated == 1

        for r in (b, c):
            await wait_until(
                partial(_hulk_reads, r, auth, "Changed through replica r1."),
                seconds=10,
                what=f"{r.name} serving the new answer",
            )
            assert await r.metric("marveld_signals_received_total", 'kind="forget"') >= 1


async def _hulk_reads(r: Replica, auth: dict[str, str], text: str) -> bool:
    page = await list_characters(r.m, auth, name_starts_with="Hulk")
    return any(c.description == text for c in page.characters)


async def test_a_replica_that_loses_listen_says_so_and_listens_again(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    async with cluster(tmp_path, sim, postgres_url, n=2) as (a, b):
        assert await b.metric("marveld_listening") == 1.0
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            ended = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (f"marveld-listen-{b.name}",),
            ).fetchall()
        assert ended == [(True,)]
        await wait_until(
            lambda: "LISTEN connection" in b.log.read_text(), seconds=10, what="the loss logged"
        )
        await wait_until(
            lambda: "listening to the other replicas again" in b.log.read_text(),
            seconds=10,
            what="listening again",
        )
        assert await b.metric("marveld_listening") == 1.0
        assert "LISTEN connection" not in a.log.read_text()  # the other one's was not touched


SUBSCRIBERS = 300  # half gRPC streams, half WebSockets, a third on each replica
USERS = 100  # each with three subscribers
CHANGES = 50


@dataclass
class Subscriber:
    """One live stream: its user, where it is now, what it received (cursor, text)."""

    auth: dict[str, str]
    kind: str  # "grpc" or "ws"
    at: Replica
    got: list[tuple[int, str]] = field(default_factory=list)

    @property
    def cursor(self) -> int | None:
        return self.got[-1][0] if self.got else None


async def test_notifications_reach_subscribers_on_every_replica_and_survive_a_kill(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    """300 subscribers (gRPC streams and WebSockets) spread over 3 replicas; 50 changes
    synced through random replicas; one replica killed halfway, its subscribers resuming
    on the others with their cursors. Every subscriber receives all 50 in order, none
    lost, none twice."""
    pick = random.Random(15)
    changes = [
        (pick.choice((HULK, SPIDER_MAN, CAPTAIN_AMERICA)), f"Change {i}.")
        for i in range(1, CHANGES + 1)
    ]
    async with cluster(tmp_path, sim, postgres_url) as replicas:
        a, _, c = replicas
        admin = await make_admin(a.m)
        await trigger_sync(a.m, admin)  # the bulk import: no notifications
        users = []
        for u in range(USERS):
            users.append(await register_and_login(replicas[u % 3].m, f"fan{u}@example.com"))
        subscribers = [
            Subscriber(users[i // 3], "grpc" if i % 2 == 0 else "ws", replicas[i % 3])
            for i in range(SUBSCRIBERS)
        ]

        async def lane(r: Replica) -> None:
            """The gRPC subscribers on ``r``, then wherever those left over resume."""
            mine = [s for s in subscribers if s.kind == "grpc" and s.at is r]
            while mine:
                await _grpc_batch(mine[0].at, mine)
                mine = [s for s in mine if len(s.got) < CHANGES]
                for s in mine:  # its replica is gone: resume on another, from its cursor
                    s.at = next(other for other in replicas if other.alive)

        async def websocket_subscriber(s: Subscriber) -> None:
            while len(s.got) < CHANGES:
                with contextlib.suppress(OSError, ConnectionClosed, HandshakeError):
                    await _follow_ws(s.at, s.auth, s.cursor, s.got, trio.Event(), CHANGES)
                if len(s.got) < CHANGES:
                    s.at = next(other for other in replicas if other.alive)

        with trio.fail_after(150):
            async with trio.open_nursery() as nursery:
                for r in replicas:
                    nursery.start_soon(lane, r)
                for s in subscribers:
                    if s.kind == "ws":
                        nursery.start_soon(websocket_subscriber, s)
                await wait_until(
                    partial(subscribed, replicas, SUBSCRIBERS), seconds=30, what="every stream live"
                )
                for i, (marvel_id, text) in enumerate(changes):
                    if i == CHANGES // 2:
                        await c.kill()  # halfway: its subscribers resume elsewhere
                    through = pick.choice([r for r in replicas if r.alive])
                    await change(through.m, marvel_id, text, webhook=False)
                    await trigger_sync(through.m, admin)
        expected = [text for _, text in changes]
        for s in subscribers:
            assert [text for _, text in s.got] == expected
            cursors = [cursor for cursor, _ in s.got]
            assert cursors == sorted(set(cursors))  # in order, none twice


async def _grpc_batch(r: Replica, subscribers: list[Subscriber]) -> None:
    """Follow each subscriber's stream on ``r`` (all on ``r``'s client connection, in its
    asyncio loop) until it has every change or the stream fails."""

    async def follow(s: Subscriber) -> None:
        stub = pb.NotificationServiceStub(r.m.client.channel)
        request = pb.SubscribeRequest(after_cursor=s.cursor)
        with contextlib.suppress(GRPCError, StreamTerminatedError, ConnectionError, OSError):
            async for note in stub.subscribe(request, metadata=s.auth, timeout=150):
                if not note.heartbeat:
                    s.got.append((note.cursor, note.character.description))
                    if len(s.got) == CHANGES:
                        return

    async def every() -> None:
        await asyncio.gather(*(follow(s) for s in subscribers))

    done = asyncio.run_coroutine_threadsafe(every(), r.m.client._loop)
    try:
        await trio.to_thread.run_sync(done.result, 150, abandon_on_cancel=True)
    finally:
        done.cancel()


async def _follow_ws(
    at: Replica,
    auth: dict[str, str],
    cursor: int | None,
    got: list[tuple[int, str]],
    live: trio.Event,
    want: int,
) -> int | None:
    """:func:`_follow_grpc` over a WebSocket."""
    query = f"?access_token={auth['authorization'][7:]}"
    if cursor is not None:
        query += f"&after_cursor={cursor}"
    async with websocket(at.m.endpoints.http_port, query) as ws:
        while len(got) < want:
            message = await ws_next(ws, seconds=60, heartbeats=True)
            if message["heartbeat"]:
                live.set()
                continue
            cursor = int(message["cursor"])
            got.append((cursor, message["character"]["description"]))
    return cursor


async def test_the_same_webhook_posted_to_every_replica_is_applied_once(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    async with cluster(tmp_path, sim, postgres_url, MARVELD_WEBHOOK_SECRET=SECRET) as replicas:
        admin = await make_admin(replicas[0].m)
        await trigger_sync(replicas[0].m, admin)
        await change(replicas[0].m, HULK, "Posted three times.", webhook=False)
        body = json.dumps(
            {"type": "character.updated", "ids": [HULK], "delivery_id": "to-all-three"}
        ).encode()
        headers = signed(body)
        answers = [await post_webhook(r.m, body, headers) for r in replicas]
        assert [(a.status_code, a.json()["status"]) for a in answers] == [
            (202, "accepted"),
            (200, "duplicate"),
            (200, "duplicate"),
        ]

        async def applied() -> bool:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM events WHERE correlation_id LIKE 'webhook:%'"
                ).fetchone()
            return row is not None and row[0] >= 1

        await wait_until(applied, seconds=10, what="the delivery applied by the leader")
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM events WHERE correlation_id LIKE 'webhook:%'"
            ).fetchone()
        assert row == (1,)


async def test_triggersync_on_every_replica_at_once_runs_one_sync_at_a_time(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    async with cluster(tmp_path, sim, postgres_url) as replicas:
        admin = await make_admin(replicas[0].m)
        sim.state.latency_ms = 1000  # the first sync is still running when the others come
        reports: list[pb.TriggerSyncResponse] = []

        async def sync(r: Replica) -> None:
            reports.append(await trigger_sync(r.m, admin))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync, replicas[0])
            await wait_until(lambda: sim.state.requests == 1, what="the first sync under way")
            for r in replicas[1:]:
                nursery.start_soon(sync, r)
        # One bootstrap for the cluster; the others waited for it, then polled.
        assert sorted(r.kind for r in reports) == ["bootstrap", "poll", "poll"]
        assert sum(r.added for r in reports) == 40
        first = next(r for r in reports if r.kind == "bootstrap")
        assert not first.waited_for_another
        # Both others waited, unless one came after the first had ended (a slow machine).
        waited = [r for r in reports if r.waited_for_another]
        assert (
            1
            <= len(waited)
            == sum("running on another replica" in r.log.read_text() for r in replicas)
        )


async def _misses(r: Replica, auth: dict[str, str], n: int) -> list[pb.CharacterPage]:
    """``n`` concurrent ListCharacters of one query on ``r`` (one asyncio gather)."""

    async def go(channel: Channel) -> list[pb.CharacterPage]:
        stub = pb.CharacterServiceStub(channel)
        request = pb.ListCharactersRequest(name_starts_with="Thor")
        return list(
            await asyncio.gather(
                *(stub.list_characters(request, metadata=auth, timeout=10) for _ in range(n))
            )
        )

    return await r.m.client.call(go)


async def test_identical_misses_spread_over_the_replicas_make_one_upstream_call(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    async with cluster(tmp_path, sim, postgres_url) as replicas:
        auth = await register_and_login(replicas[0].m)
        sim.state.latency_ms = 300  # every miss is in flight while the others arrive
        pages: list[pb.CharacterPage] = []

        async def spread(r: Replica) -> None:
            pages.extend(await _misses(r, auth, 333))

        async with trio.open_nursery() as nursery:
            for r in replicas:
                nursery.start_soon(spread, r)
        assert len(pages) == 999
        assert sim.state.requests == 1
        assert {tuple(c.id for c in p.characters) for p in pages} == {
            tuple(c.id for c in pages[0].characters)
        }
        assert pages[0].characters  # Thor is in the catalogue


async def test_when_the_replica_filling_a_miss_is_killed_another_asks_once_more(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    async with cluster(tmp_path, sim, postgres_url, MARVELD_CACHE_FILL_LEASE="1s") as (a, b, c):
        auth = await register_and_login(a.m)
        sim.state.latency_ms = 2500  # longer than a lease: the filler renews it
        answers: dict[str, list[pb.CharacterPage]] = {}

        async def ask(r: Replica) -> None:
            answers[r.name] = await _misses(r, auth, 5)

        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.deadline = trio.current_time() + 30

            async def doomed() -> None:
                with contextlib.suppress(GRPCError, StreamTerminatedError, ConnectionError):
                    await ask(a)

            nursery.start_soon(doomed)
            await wait_until(lambda: sim.state.requests == 1, what="r1 asking the upstream")
            nursery.start_soon(ask, b)
            nursery.start_soon(ask, c)
            for r in (b, c):  # each found nothing in the database: it claims, then waits
                await wait_until(partial(_missed, r), what=f"{r.name} missing in the database")
            await a.kill()  # mid-fill: its lease is not renewed, and ends within 1 s
        assert sorted(answers) == ["r2", "r3"]
        assert sim.state.requests == 2  # r1's call, and one of r2 and r3 after its lease
        assert all(p.characters for pages in answers.values() for p in pages)


async def _missed(r: Replica) -> bool:
    return await r.metric("marveld_cache_requests_total", _DATABASE_MISS) >= 1


_DATABASE_MISS = 'result="miss",tier="postgresql"'  # label names in Prometheus's order


async def test_wrong_passwords_spread_over_the_replicas_are_throttled_as_if_sent_to_one(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    async with cluster(
        tmp_path, sim, postgres_url, MARVELD_RATELIMIT_LOGIN_FAILURES="3"
    ) as replicas:
        await register_and_login(replicas[0].m, "victim@example.com")
        guess = login("victim@example.com", "not the password")
        for r in replicas:  # one wrong password on each: three in all
            assert (await status_of(r.m, guess)).status is Status.UNAUTHENTICATED
        for r in replicas:  # the fourth is refused wherever it is sent, the right one too
            refused = await status_of(r.m, login("victim@example.com"))
            assert refused.status is Status.RESOURCE_EXHAUSTED
            assert "too many failed logins" in (refused.message or "")


async def test_the_daily_budget_holds_for_the_cluster_across_a_restart_of_every_replica(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    budgeted = partial(
        cluster,
        tmp_path,
        sim,
        postgres_url,
        MARVELD_UPSTREAM_DAILY_BUDGET="12",
        MARVELD_UPSTREAM_POLLER_RESERVE="2",
    )
    names = iter(f"Name{n}" for n in range(1000))  # distinct misses: one call each

    async def spend(replicas: list[Replica], auth: dict[str, str]) -> None:
        for _ in range(6):
            for r in replicas:
                with contextlib.suppress(GRPCError):
                    await list_characters(r.m, auth, name_starts_with=next(names))

    async with budgeted() as replicas:
        auth = await register_and_login(replicas[0].m)
        await spend(replicas, auth)  # 18 misses, over 3 replicas
        assert sim.state.requests == 10  # the budget less the poller's reserve
    async with budgeted() as replicas:  # every replica restarted
        await spend(replicas, auth)
        assert sim.state.requests == 10  # the same day: nothing more
