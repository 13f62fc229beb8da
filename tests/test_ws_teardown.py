"""WebSocket subscribers end when their peer goes, however it goes: a close frame, a TCP
connection closed or reset without one, a peer killed with SIGKILL, one that leaves in the
middle of the handshake, one that stops answering pings. Each of them leaves the subscriber
gauge at once (asserted equal to the live subscribers, read from /metrics), is no longer
counted as delivered to, and has its access line logged when it goes, not at shutdown.
Bad query parameters are refused at the door with 400 problem+json naming them.

Rules: a real daemon on port 0, trio-websocket as the client, raw sockets for the abrupt
ends; waits are for observable conditions under ``trio.fail_after`` (tests/waiting.py).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from marveld.services.notifications import MAX_CURSOR
from marveld.sim import SimHandle
from tests.aio import grpc_client
from tests.calls import register_and_login
from tests.conftest import Clock, Running
from tests.notify_clients import websocket, ws_next
from tests.test_notifications import HULK, change, start
from tests.test_sync import SPIDER_MAN, make_admin, trigger_sync
from tests.waiting import wait_until
from tests.ws_raw import answer_pings

PATH = "/v1/notifications/ws"
GAUGE = re.compile(r'^marveld_notification_subscribers\{channel="websocket"\} (\S+)$', re.M)
DELIVERED = re.compile(
    r'^marveld_notifications_delivered_total\{channel="websocket"\} (\S+)$', re.M
)
ACCESS = "WEBSOCKET /v1/notifications/ws"


@pytest.fixture
async def daemon(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock
) -> AsyncIterator[Running]:
    """A daemon after its first sync; heartbeats (and hypercorn's pings) every second."""
    m: Running = await start(nursery, sim, tmp_path, clock, MARVELD_NOTIFICATIONS_HEARTBEAT="1s")
    async with grpc_client(m.endpoints.grpc_port) as client:
        m.client = client
        m.admin = await make_admin(m)  # type: ignore[attr-defined]
        await trigger_sync(m, m.admin)  # type: ignore[attr-defined]
        yield m


async def figure(m: Running, pattern: re.Pattern[str]) -> float:
    found = pattern.search(await m.metrics())
    return float(found.group(1)) if found else 0.0


async def subscribers_are(m: Running, count: int, what: str = "") -> None:
    async def exact() -> bool:
        return await figure(m, GAUGE) == count

    await wait_until(exact, what=what or f"{count} websocket subscriber(s) in the gauge")


def upgrade_request(port: int, auth: dict[str, str] | None, query: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    token = f"Authorization: {auth['authorization']}\r\n" if auth else ""
    return (
        f"GET {PATH}{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{token}\r\n"
    ).encode()


async def raw_upgrade(
    port: int, auth: dict[str, str], pongs: trio.Nursery | None = None
) -> trio.SocketStream:
    """A raw socket through the upgrade (101 read). It answers pings from a task in
    ``pongs``, if given (the daemon closes a silent WebSocket); else it never does."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(upgrade_request(port, auth))
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    if pongs is not None:
        pongs.start_soon(answer_pings, stream)
    return stream


async def reset(stream: trio.SocketStream) -> None:
    """Close with an RST: no close frame, no FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if ACCESS in r.getMessage()]


async def test_each_way_a_peer_leaves_ends_its_subscriber_at_once(
    daemon: Running, caplog: pytest.LogCaptureFixture
) -> None:
    m = daemon
    caplog.set_level(logging.INFO, logger="marveld.web.access_log")
    auth = await register_and_login(m)
    headers = {"Authorization": auth["authorization"]}
    port = m.endpoints.http_port
    async with websocket(port, **headers) as staying:
        assert (await ws_next(staying, heartbeats=True))["heartbeat"]
        await subscribers_are(m, 1)
        # A clean close: a close frame, answered.
        async with websocket(port, **headers) as ws:
            assert (await ws_next(ws, heartbeats=True))["heartbeat"]
            await subscribers_are(m, 2)
        await subscribers_are(m, 1, "the cleanly closed subscriber gone")
        # A TCP close without a close frame, then a reset.
        for end in (trio.SocketStream.aclose, reset):
            async with trio.open_nursery() as pongs:
                raw = await raw_upgrade(port, auth, pongs)
                await subscribers_are(m, 2)
                await end(raw)
            await subscribers_are(m, 1, f"the subscriber ended by {end.__name__} gone")
        # Gone in the middle of the handshake: the upgrade sent, the socket closed at once.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(upgrade_request(port, auth))
        await wait_until(lambda: len(access_lines(caplog)) == 4, what="4 access lines")
        await subscribers_are(m, 1, "the subscriber gone mid-handshake")
        # The one left still hears of a change, and only it is counted as delivered to.
        delivered = await figure(m, DELIVERED)
        await change(m, SPIDER_MAN, "Only one listener.")
        assert (await ws_next(staying))["character"]["description"] == "Only one listener."
        await change(m, HULK, "Still only one.")
        assert (await ws_next(staying))["character"]["id"] == HULK

        async def counted() -> bool:
            return await figure(m, DELIVERED) == delivered + 2

        await wait_until(counted, what="two deliveries counted")
        await subscribers_are(m, 1)
        assert await figure(m, DELIVERED) == delivered + 2
    await subscribers_are(m, 0)
    assert len(access_lines(caplog)) == 5


KILLED_CLIENT = """
import base64, os, socket, sys
port, token = int(sys.argv[1]), sys.argv[2]
sock = socket.create_connection(("127.0.0.1", port))
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall((f"GET {path} HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\n"
    f"Connection: Upgrade\\r\\nSec-WebSocket-Key: {key}\\r\\nSec-WebSocket-Version: 13\\r\\n"
    f"Authorization: Bearer {token}\\r\\n\\r\\n").encode())
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += sock.recv(4096)
print(head.split(b"\\r\\n")[0].decode(), flush=True)
sys.stdin.read()
"""


async def test_a_client_killed_with_sigkill_is_unsubscribed(daemon: Running) -> None:
    m = daemon
    auth = await register_and_login(m)
    token = auth["authorization"].removeprefix("Bearer ")
    script = KILLED_CLIENT.replace("{path}", PATH)
    args = [sys.executable, "-c", script, str(m.endpoints.http_port), token]
    async with trio.open_nursery() as nursery:
        procs = []
        for _ in range(3):
            proc = await trio.lowlevel.open_process(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            procs.append(proc)
        for proc in procs:
            assert proc.stdout is not None
            with trio.fail_after(10):
                line = await proc.stdout.receive_some(100)
            assert line.startswith(b"HTTP/1.1 101")
        await subscribers_are(m, 3)
        for proc in procs:
            proc.kill()
            await proc.wait()
        nursery.cancel_scope.cancel()
    await subscribers_are(m, 0, "the killed clients' subscribers gone")


async def test_the_gauge_is_exact_after_churn(daemon: Running) -> None:
    """30 opened; 10 closed cleanly, 10 dropped without a close frame (half of them reset),
    10 gone mid-handshake; twice over. The gauge reads the live ones exactly each time."""
    m = daemon
    auth = await register_and_login(m)
    port = m.endpoints.http_port
    url = f"ws://127.0.0.1:{port}{PATH}"
    headers = [(b"authorization", auth["authorization"].encode())]
    async with trio.open_nursery() as nursery:

        async def one(done: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
            # trio-websocket answers pings only while its message queue has room: room
            # for the heartbeats of the test's length (the daemon closes a silent peer).
            async with open_websocket_url(url, extra_headers=headers, message_queue_size=64) as ws:
                await ws.get_message()  # a heartbeat: subscribed
                task_status.started()
                await done.wait()

        for _round in range(2):
            clean = trio.Event()
            for _ in range(10):
                await nursery.start(one, clean)
            raws = [await raw_upgrade(port, auth, nursery) for _ in range(10)]
            await subscribers_are(m, 20)
            for i, raw in enumerate(raws):
                await (reset(raw) if i % 2 else raw.aclose())
            for _ in range(10):
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(upgrade_request(port, auth))
            clean.set()
            await subscribers_are(m, 0, f"round {_round}: every subscriber gone")
    async with trio.open_nursery() as nursery:
        live = [await raw_upgrade(port, auth, nursery) for _ in range(3)]
        await subscribers_are(m, 3)
        for raw in live:
            await raw.aclose()
    await subscribers_are(m, 0)


async def test_a_peer_that_stops_answering_pings_is_closed(daemon: Running) -> None:
    """hypercorn pings every heartbeat; a peer that sends no pong (a raw socket that reads
    and never answers) should be closed, and its subscriber ended."""
    m = daemon
    auth = await register_and_login(m)
    raw = await raw_upgrade(m.endpoints.http_port, auth)
    try:
        await subscribers_are(m, 1)
        with trio.fail_after(5):  # five pings unanswered
            while await raw.receive_some(4096):
                pass  # pings and heartbeats, until the server closes the connection
        await subscribers_are(m, 0)
    finally:
        await raw.aclose()


async def refused(port: int, request: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Send an upgrade request over a raw socket; the HTTP answer: status, headers, the
    problem+json body. The server closes the connection after it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    answer = b""
    with trio.fail_after(5):
        await stream.send_all(request)
        while chunk := await stream.receive_some(65536):
            answer += chunk
    await stream.aclose()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-correlation-id"]
    assert int(headers["content-length"]) == len(body)
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (f"?after_cursor={MAX_CURSOR + 1}", "after_cursor"),
        (f"?after_cursor={2**64}", "after_cursor"),
        ("?after_cursor=" + "9" * 5000, "after_cursor"),
        ("?after_cursor=-1", "after_cursor"),
        ("?after_cursor=%205", "after_cursor"),
        ("?after_cursor=1e3", "after_cursor"),
        ("?after_cursor=", "after_cursor"),
        ("?after_cursor=1&after_cursor=2", "after_cursor"),
        ("?cursor=1", "cursor"),
    ],
)
async def test_bad_query_parameters_are_refused_at_the_door_naming_them(
    daemon: Running, query: str, field: str
) -> None:
    m = daemon
    auth = await register_and_login(m)
    port = m.endpoints.http_port
    status, _, problem = await refused(port, upgrade_request(port, auth, query))
    assert (status, problem["status"], problem["field"]) == (400, 400, field)
    assert field in problem["detail"]
    assert problem["correlation_id"]
    await subscribers_are(m, 0)


async def test_the_largest_cursor_is_served_and_a_missing_token_is_401(daemon: Running) -> None:
    m = daemon
    auth = await register_and_login(m)
    port = m.endpoints.http_port
    async with websocket(port, f"?after_cursor={MAX_CURSOR}", **auth) as ws:
        assert (await ws_next(ws, heartbeats=True))["heartbeat"]
    status, headers, problem = await refused(port, upgrade_request(port, None))
    assert (status, problem["status"]) == (401, 401)
    assert headers["www-authenticate"].startswith("Bearer")
    await subscribers_are(m, 0)


async def test_a_client_message_is_dropped_and_the_stream_goes_on(daemon: Running) -> None:
    m = daemon
    auth = await register_and_login(m)
    async with websocket(m.endpoints.http_port, Authorization=auth["authorization"]) as ws:
        await ws.send_message("hello?")
        await change(m, SPIDER_MAN, "Heard despite the chatter.")
        assert (await ws_next(ws))["character"]["description"] == "Heard despite the chatter."
    await subscribers_are(m, 0)
