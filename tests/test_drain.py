"""A graceful stop of one daemon (docs/scale-out.md, "Stopping a replica"): not ready at
once while still serving for ``shutdown.drain_delay``; then GOAWAY on every gRPC
connection, a call under way answered, a call sent after the GOAWAY refused (it never
ran: clients retry it elsewhere), notification streams and WebSockets ended with their
resume cursor, both ports closed, and ``daemon.run`` returns.

The SIGTERM path through the CLI (exit status 0, the log lines) is tested in
tests/test_cli.py; the same under a load balancer with three replicas in
tests/test_cluster.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from grpclib.health.v1.health_pb2 import HealthCheckResponse
from h2.errors import ErrorCodes
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection

from marveld import daemon
from marveld.config import ConfigError, Settings
from marveld.grpc.notifications import RESUME_TRAILER
from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle, SimOptions, run_sim
from tests.aio import grpc_client
from tests.calls import register_and_login
from tests.conftest import (
    FAST_HASHER,
    PRIVATE_KEY,
    PUBLIC_KEY,
    RECORDED_SLICE,
    Clock,
    Running,
    make_settings,
)
from tests.h2raw import RawH2, grpc_request, message
from tests.notify_clients import grpc_stream, websocket
from tests.test_systemd import grpc_health
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

SLOW_UPSTREAM_MS = 1500.0  # the call under way when the drain begins


@pytest.fixture
async def slow_sim(nursery: trio.Nursery) -> SimHandle:
    """The simulator, answering at once until a test sets ``state.latency_ms``."""
    options = SimOptions(dataset=RECORDED_SLICE, public_key=PUBLIC_KEY, private_key=PRIVATE_KEY)
    handle: SimHandle = await nursery.start(run_sim, options)
    return handle


class Stoppable:
    """``daemon.run`` with a stop event, and an event set when it has returned."""

    def __init__(self) -> None:
        self.stop = trio.Event()
        self.returned = trio.Event()

    async def run(
        self, settings: Settings, clock: Clock, task_status: trio.TaskStatus[daemon.Endpoints]
    ) -> None:
        await daemon.run(
            settings,
            hasher=FAST_HASHER,
            clock=clock,
            monotonic=clock.monotonic,
            stop=self.stop,
            task_status=task_status,
        )
        self.returned.set()


@pytest.fixture
async def draining(
    nursery: trio.Nursery, slow_sim: SimHandle, tmp_path: Path, clock: Clock
) -> AsyncIterator[tuple[Running, Stoppable]]:
    settings = make_settings(
        tmp_path,
        slow_sim.url,
        MARVELD_SHUTDOWN_DRAIN_DELAY="0.5s",
        MARVELD_SHUTDOWN_GRACE="10s",
        MARVELD_NOTIFICATIONS_HEARTBEAT="0.2s",
    )
    stoppable = Stoppable()
    endpoints = await nursery.start(partial(stoppable.run, settings, clock))
    async with grpc_client(endpoints.grpc_port) as client:
        yield Running(settings, endpoints, slow_sim, client), stoppable


async def _readyz(m: Running) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(f"{m.http}/readyz")


async def _refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


def _list_request(auth: dict[str, str]) -> list[tuple[str, str]]:
    return grpc_request("/marvel.v1.CharacterService/ListCharacters", *auth.items())


async def test_a_drain_answers_the_call_under_way_refuses_new_ones_and_ends_streams_with_cursors(
    draining: tuple[Running, Stoppable],
) -> None:
    m, stoppable = draining
    auth = await register_and_login(m)
    raw = await RawH2.connect(m.endpoints.grpc_port)
    await raw.settings()
    async with (
        grpc_stream(m.client, auth) as stream,
        websocket(m.endpoints.http_port, **{"Authorization": auth["authorization"]}) as ws,
    ):
        assert (await stream.next(heartbeats=True)).heartbeat  # both subscribers are live
        await ws.get_message()

        # A call under way: a miss the upstream takes 1.5 s to answer.
        m.sim.state.latency_ms = SLOW_UPSTREAM_MS
        seen = m.sim.state.requests
        body = bytes(pb.ListCharactersRequest(name="Spider-Man"))
        slow = await raw.request(_list_request(auth), message(body))
        await wait_until(lambda: m.sim.state.requests > seen, what="the slow call upstream")

        stoppable.stop.set()
        # Not ready at once, and still serving through the drain delay.
        readyz = await _readyz(m)
        assert readyz.status_code == 503
        assert readyz.json()["checks"]["accepting"] is False
        assert await grpc_health(m.endpoints.grpc_port) == HealthCheckResponse.NOT_SERVING

        # Once the port stops listening, every connection has its GOAWAY (not read yet):
        # a call sent now crossed it, and never runs: refused, for the client to retry.
        await wait_until(lambda: _refused(m.endpoints.grpc_port), what="the port closed")
        late = await raw.request(_list_request(auth), message(body))
        assert (await raw.until_answered(late)).reset == ErrorCodes.REFUSED_STREAM
        # The GOAWAY: NO_ERROR, naming the call under way as the last one served.
        assert raw.goaway is not None
        assert raw.goaway.error_code == ErrorCodes.NO_ERROR
        assert raw.goaway.last_stream_id == slow
        # The call under way is answered in full.
        answer = await raw.until_answered(slow)
        assert (answer.status, answer.message) == ("0", "")
        await raw.until_closed()  # and then the connection closes
        await raw.aclose()

        # Notification streams end with a status clients retry and their resume cursor.
        ended = await stream.ended()
        assert ended is not None
        assert ended.status.name == "UNAVAILABLE"
        assert "resume with after_cursor=" in ended.message
        assert RESUME_TRAILER in stream.trailers
        # WebSockets are closed "going away", with the cursor in the reason.
        reason = await _close_reason(ws)
        assert reason.code == 1001
        assert "resume with after_cursor=" in (reason.reason or "")

    with trio.fail_after(15):
        await stoppable.returned.wait()  # every connection closed: run returned by itself
    assert await _refused(m.endpoints.grpc_port)
    assert await _refused(m.endpoints.http_port)


async def _close_reason(ws: WebSocketConnection) -> CloseReason:
    with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:  # noqa: PT012
        while True:
            await ws.get_message()
    assert closed.value.reason is not None
    return closed.value.reason


async def test_an_idle_connection_is_closed_at_once_and_the_drain_ends_before_its_grace(
    draining: tuple[Running, Stoppable],
) -> None:
    m, stoppable = draining
    raw = await RawH2.connect(m.endpoints.grpc_port)
    await raw.settings()
    async with httpx.AsyncClient(timeout=5) as http:  # an HTTP keep-alive connection, idle
        assert (await http.get(f"{m.http}/healthz")).status_code == 200
        stoppable.stop.set()
        with trio.fail_after(5):  # well inside the 10 s grace
            await raw.until_closed()
            await stoppable.returned.wait()
    await raw.aclose()
    assert raw.goaway is not None
    assert raw.goaway.error_code == ErrorCodes.NO_ERROR


@pytest.mark.parametrize(
    ("name", "value", "wanted"),
    [
        ("MARVELD_SHUTDOWN_DRAIN_DELAY", "-1s", "expected seconds or a duration"),
        ("MARVELD_SHUTDOWN_GRACE", "0", "more than 0 seconds"),
    ],
)
def test_drain_settings_are_range_checked(
    tmp_path: Path, name: str, value: str, wanted: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_settings(tmp_path, "http://127.0.0.1:1/v1/public", **{name: value})
    assert name in str(info.value)
    assert wanted in str(info.value)


def test_no_drain_delay_is_allowed(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, "http://127.0.0.1:1/v1/public", MARVELD_SHUTDOWN_DRAIN_DELAY="0"
    )
    assert settings.shutdown.drain_delay == 0.0
