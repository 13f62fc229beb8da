"""Notifications survive a kill -9: the daemon PROCESS is killed with SIGKILL right after a
sync has committed the events of three changes (before or while the notification saga turns
them into notifications), restarted on the same database, and a client resuming with its
last cursor gets one notification per change, exactly once, in order; ListNotifications
agrees.

Rules: the simulator runs in the test on port 0; ``python -m marveld serve`` runs as a
subprocess on free ports; waits are for observable conditions under ``trio.fail_after``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from bench.harness import free_port
from marveld import daemon
from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from tests.aio import grpc_client
from tests.calls import register_and_login
from tests.conftest import Running, daemon_env, make_settings
from tests.notify_clients import grpc_stream
from tests.test_notifications import HULK, change, list_notifications
from tests.test_sync import SPIDER_MAN, make_admin, rows, trigger_sync
from tests.waiting import wait_until

ROOT = Path(__file__).parents[1]
CAPTAIN_AMERICA = 1009220


async def healthy(http_port: int) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            return (await http.get(f"http://127.0.0.1:{http_port}/healthz")).status_code == 200
    except httpx.TransportError:
        return False


@asynccontextmanager
async def daemon_process(
    tmp_path: Path, sim: SimHandle, run: int, *, kill: bool, database: dict[str, str] | None = None
) -> AsyncIterator[tuple[Running, trio.Process]]:
    """``marveld serve`` in a subprocess with a client; SIGKILLed (``kill``) or SIGTERMed.
    Its database is SQLite in ``tmp_path``, or what ``database`` (the fixture) says."""
    overrides = {
        "MARVELD_GRPC_LISTEN": f"127.0.0.1:{free_port()}",
        "MARVELD_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        "MARVELD_NOTIFICATIONS_HEARTBEAT": "0.2s",
        **(database or {}),
    }
    settings = make_settings(tmp_path, sim.url, **overrides)
    env = {**os.environ, **daemon_env(tmp_path, sim.url), **overrides}
    if database:
        del env["MARVELD_DATABASE_PATH"]
    config = tmp_path / "marveld.toml"
    config.touch()
    with (tmp_path / f"daemon-{run}.log").open("wb") as log:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "marveld", "serve", "--config", str(config)],
            env=env,
            cwd=ROOT,
            stderr=log,
        )
    try:
        endpoints = daemon.Endpoints(
            grpc_port=int(overrides["MARVELD_GRPC_LISTEN"].rsplit(":", 1)[1]),
            http_port=int(overrides["MARVELD_HTTP_LISTEN"].rsplit(":", 1)[1]),
        )
        await wait_until(
            lambda: healthy(endpoints.http_port), seconds=30, what=f"daemon {run} serving"
        )
        async with grpc_client(endpoints.grpc_port) as client:
            yield Running(settings, endpoints, sim, client), proc
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is not None:
                pass  # the test stopped it
            elif kill:
                proc.kill()  # SIGKILL: no cleanup, no exception handler runs
            else:
                proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                await proc.wait()
    if kill:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 0, (tmp_path / f"daemon-{run}.log").read_text()


@pytest.mark.both_backends
async def test_a_daemon_killed_between_the_events_and_their_delivery_loses_nothing(
    sim: SimHandle, tmp_path: Path, database: dict[str, str]
) -> None:
    async with daemon_process(tmp_path, sim, 1, kill=True, database=database) as (m, _):
        admin = await make_admin(m)
        await trigger_sync(m, admin)  # the bulk import: no notifications
        auth = await register_and_login(m)
        async with grpc_stream(m.client, auth) as stream:
            assert (await stream.next(heartbeats=True)).heartbeat  # live
            await change(m, SPIDER_MAN, "Before the kill.", webhook=False)
            await trigger_sync(m, admin)
            first = await stream.next(seconds=10)
        assert first.character.description == "Before the kill."
        texts = ["Killed one.", "Killed two.", "Killed three."]
        # Three characters: two changes to one character in one sync are one update.
        for marvel_id, text in zip((HULK, SPIDER_MAN, CAPTAIN_AMERICA), texts, strict=True):
            await change(m, marvel_id, text, webhook=False)
        await trigger_sync(m, admin)  # the events are committed when this returns
        ((events,),) = await rows(m, "SELECT max(seq) FROM events")
        assert events > first.cursor
        # ...and the process is SIGKILLed now, leaving the context.
    written = "SELECT count(DISTINCT event_seq) FROM notifications WHERE cursor > ?"
    ((delivered,),) = await rows(m, written, first.cursor)
    assert delivered in range(4)  # the saga, wherever it was

    async with daemon_process(tmp_path, sim, 2, kill=False, database=database) as (m, _):
        async with grpc_stream(m.client, auth, after_cursor=first.cursor) as stream:
            resumed = [await stream.next(seconds=10) for _ in range(3)]
            # Nothing more: the next thing on the stream is a heartbeat.
            assert (await stream.next(heartbeats=True)).heartbeat
        polled = await list_notifications(m, auth, after=first.cursor)
    assert sorted(n.character.description for n in resumed) == sorted(texts)
    assert [n.cursor for n in resumed] == sorted({n.cursor for n in resumed})
    assert len({n.id for n in resumed}) == 3
    assert all(n.type is pb.NotificationType.CHARACTER_UPDATED for n in resumed)
    assert [n.id for n in polled.notifications] == [n.id for n in resumed]
    assert polled.next_cursor == resumed[-1].cursor
    once = "SELECT count(*), count(DISTINCT recipient_id || ':' || event_seq) FROM notifications"
    ((notifications, distinct),) = await rows(m, once)
    assert notifications == distinct


async def test_a_stream_ends_with_its_cursor_at_shutdown_and_resumes_after_a_restart(
    sim: SimHandle, tmp_path: Path
) -> None:
    async with daemon_process(tmp_path, sim, 1, kill=False) as (m, proc):
        admin = await make_admin(m)
        await trigger_sync(m, admin)
        auth = await register_and_login(m)
        async with grpc_stream(m.client, auth) as stream:
            assert (await stream.next(heartbeats=True)).heartbeat  # live
            await change(m, SPIDER_MAN, "Seen before the stop.", webhook=False)
            await trigger_sync(m, admin)
            delivered = [await stream.next(seconds=10)]
            # Committed, maybe not yet delivered, when the daemon is told to stop.
            await change(m, HULK, "Made before the stop.", webhook=False)
            await trigger_sync(m, admin)
            proc.send_signal(signal.SIGTERM)
            while isinstance(item := await stream.next(seconds=15), pb.Notification):
                delivered.append(item)
            with trio.fail_after(15):
                await proc.wait()
    if item is None:  # a normal end: resume after the last notification received
        cursor = delivered[-1].cursor
    else:
        assert isinstance(item, GRPCError), item
        assert item.status is Status.UNAVAILABLE, item
        cursor = int(stream.trailers["resume-cursor"])
        assert f"after_cursor={cursor}" in (item.message or "")
        assert delivered[0].cursor <= cursor <= delivered[-1].cursor
    await change(m, CAPTAIN_AMERICA, "Made while stopped.", webhook=False)

    async with daemon_process(tmp_path, sim, 2, kill=False) as (m, _):
        await trigger_sync(m, admin)
        polled = await list_notifications(m, auth)
        expected = [n.id for n in polled.notifications]
        kept = [n for n in delivered if n.cursor <= cursor]
        async with grpc_stream(m.client, auth, after_cursor=cursor) as stream:
            resumed = [await stream.next(seconds=10) for _ in range(len(expected) - len(kept))]
            assert (await stream.next(heartbeats=True)).heartbeat  # and nothing more
    texts = [n.character.description for n in polled.notifications]
    assert texts == ["Seen before the stop.", "Made before the stop.", "Made while stopped."]
    assert [n.id for n in [*kept, *resumed]] == expected  # none lost, none twice
