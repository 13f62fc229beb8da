"""Notifications: fan-out of one change to many idle gRPC subscribers, and replay.

Starts ``marveld sim`` and ``marveld serve`` as subprocesses (bench/harness.py).

- fan-out: ``--subscribers`` Subscribe streams of one user, opened by ``--workers`` client
  processes (grpclib, 100 streams a connection); once the daemon's
  ``marveld_notification_subscribers`` gauge shows them all, the daemon's RSS
  (/proc/<pid>/status VmRSS) is read again, and one change is made and synced:
  commit-to-delivery per stream = the client's receive time minus the event's commit time
  (``events.created_at``), p50/p99; RSS per idle subscriber = RSS delta / subscribers.
- websocket: ``--websockets`` idle subscribers on ``GET /v1/notifications/ws`` (one
  connection each, as browsers open them), from ``--workers`` client processes: two
  thirds trio-websocket clients, one third raw sockets through the upgrade. Once the gauge
  shows them all and a heartbeat has gone to each, RSS per idle subscriber = RSS delta /
  subscribers, printed beside fan-out's gRPC figure. Then they go, each as a peer can: the
  trio-websocket ones with a close frame, the raw ones reset (no close frame), and as many
  more leave in the middle of the handshake; the gauge must read 0 (it read the live ones
  exactly before), and RSS once the connections are gone is compared with the baseline.
- replay: ``--replay`` notifications for one user written straight into SQLite (events and
  notifications, ``notify.position`` moved past them, one transaction), then one Subscribe
  with after_cursor=0 reads them all: notifications/s.

Prints a table and writes bench/results/notifications.json. Figures, not pass/fail.

    .venv/bin/python -m bench.notifications [--subscribers 10000] [--websockets 1500]
        [--replay 100000]

On this 2-core machine 10,000 streams (two client processes) connect in ~5 s and one change
reaches all of them in ~2.5 s, so the full 10,000 fit well within a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import socket
import sqlite3
import struct
import time
import uuid
from contextlib import closing
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import trio
from grpclib.client import Channel
from grpclib.const import Cardinality
from trio_websocket import open_websocket_url

from bench.harness import SUBSCRIBERS, gauges, login, percentile, processes, rss_kib
from marveld.malloc import TRIM_INTERVAL_SECONDS
from marveld.proto.marvel import v1 as pb
from marveld.storage import Store
from tests.ws_raw import answer_pings

RESULTS = Path(__file__).parent / "results"
STREAMS_PER_CHANNEL = 100
SPIDER_MAN = 1009610
WAIT_SECONDS = 60.0
WS_SUBSCRIBERS = 'marveld_notification_subscribers{channel="websocket"}'
WS_PATH = "/v1/notifications/ws"
WS_HEARTBEAT_SECONDS = 5.0  # hypercorn pings as often; the clients answer


def wait_for(condition: Any, what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise RuntimeError(f"not within {seconds:g}s: {what}")


def subscribe(channel: Channel, auth: dict[str, str]) -> Any:
    return channel.request(
        "/marvel.v1.NotificationService/Subscribe",
        Cardinality.UNARY_STREAM,
        pb.SubscribeRequest,
        pb.Notification,
        timeout=WAIT_SECONDS * 2,
        metadata=auth,
    )


def subscriber_worker(
    port: int, auth: dict[str, str], count: int, per_channel: int, conn: Connection
) -> None:
    """A client process: ``count`` streams, ``per_channel`` a connection; sends back
    (event_id, receive time) per stream."""

    async def main() -> list[tuple[str, float]]:
        channels = [Channel("127.0.0.1", port) for _ in range(-(-count // per_channel))]

        async def one(channel: Channel) -> tuple[str, float]:
            async with subscribe(channel, auth) as stream:
                await stream.send_message(pb.SubscribeRequest(), end=True)
                while (note := await stream.recv_message()) is not None:
                    if not note.heartbeat:
                        received = time.time()
                        await stream.cancel()
                        return note.event_id, received
            return "", 0.0

        try:
            tasks = [one(channels[i // per_channel]) for i in range(count)]
            return list(await asyncio.gather(*tasks))
        finally:
            for channel in channels:
                channel.close()

    conn.send(asyncio.run(main()))
    conn.close()


async def make_admin(db: Path, email: str) -> None:
    async with Store.open(db) as store:
        await store.users.set_role(email, "admin", datetime.now(UTC))


def grpc_call(port: int, fn: Any) -> Any:
    async def go() -> Any:
        channel = Channel("127.0.0.1", port)
        try:
            return await fn(channel)
        finally:
            channel.close()

    return asyncio.run(go())


def trigger_sync(port: int, admin: dict[str, str], timeout: float = 60) -> None:
    grpc_call(
        port,
        lambda ch: pb.AdminServiceStub(ch).trigger_sync(
            pb.TriggerSyncRequest(), metadata=admin, timeout=timeout
        ),
    )


class Synced(NamedTuple):
    sim: Any
    daemon: Any
    db: Path
    admin: dict[str, str]
    auth: dict[str, str]


def synced_daemon(procs: Any, user: str) -> Synced:
    """A simulator and a daemon (slow heartbeats) after its first full sync, whose bulk
    import notifies nobody; its database file, an admin's token and a new user's."""
    sim = procs.sim()
    # Room for fan_out_1's connections, one a subscriber, past the default cap of 1,000.
    daemon = procs.daemon(
        sim, MARVELD_NOTIFICATIONS_HEARTBEAT="600s", MARVELD_GRPC_MAX_CONNECTIONS="20000"
    )
    procs.wait_ready()
    db = procs.tmp / "daemon.db"
    admin = grpc_call(daemon.grpc_port, lambda ch: login(ch, "Admin"))
    trio.run(make_admin, db, "admin@example.com")
    trigger_sync(daemon.grpc_port, admin)
    auth = grpc_call(daemon.grpc_port, lambda ch: login(ch, user))
    return Synced(sim, daemon, db, admin, auth)


class Subscribers(NamedTuple):
    """Client processes holding Subscribe streams (:func:`subscriber_worker`)."""

    pipes: list[Connection]
    children: list[multiprocessing.process.BaseProcess]

    @classmethod
    def start(
        cls, targets: list[tuple[int, int]], auth: dict[str, str], per_channel: int
    ) -> Subscribers:
        """One process per (gRPC port, stream count) of ``targets``."""
        ctx = multiprocessing.get_context("spawn")
        started = cls([], [])
        for port, count in targets:
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=subscriber_worker, args=(port, auth, count, per_channel, child)
            )
            proc.start()
            child.close()
            started.pipes.append(parent)
            started.children.append(proc)
        return started

    def failed(self) -> bool:
        return any(p.exitcode not in (None, 0) for p in self.children)

    def received(self) -> list[tuple[str, float]]:
        """(event id, receive time) of every stream, process by process, in order."""
        got: list[tuple[str, float]] = []
        for parent in self.pipes:
            if not parent.poll(WAIT_SECONDS):
                raise RuntimeError("a client process did not report")
            got += parent.recv()
        return got

    def stop(self) -> None:
        for proc in self.children:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


def fan_out(
    subscribers: int, workers: int, per_channel: int = STREAMS_PER_CHANNEL
) -> dict[str, Any]:
    with processes() as procs:
        sim, daemon, db, admin, auth = synced_daemon(procs, "Fan")
        rss_before = rss_kib(daemon.pid)
        started = time.monotonic()
        counts = [subscribers // workers + (w < subscribers % workers) for w in range(workers)]
        clients = Subscribers.start([(daemon.grpc_port, n) for n in counts], auth, per_channel)
        try:

            def all_subscribed() -> bool:
                if clients.failed():
                    raise RuntimeError("a client process failed")
                return gauges(daemon, SUBSCRIBERS)[0] >= subscribers

            wait_for(all_subscribed, f"{subscribers} subscribers")
            connect_s = time.monotonic() - started
            rss_after = rss_kib(daemon.pid)
            httpx.post(
                f"{sim.base_url}/_sim/characters/{SPIDER_MAN}",
                json={"description": "Fan-out."},
                params={"webhook": "false"},
                timeout=10,
            ).raise_for_status()
            trigger_sync(daemon.grpc_port, admin)
            received = clients.received()
        finally:
            clients.stop()
        with closing(sqlite3.connect(db)) as conn:
            committed = {
                row[0]: datetime.fromisoformat(row[1]).timestamp()
                for row in conn.execute("SELECT id, created_at FROM events")
            }
    delays = sorted(at - committed[event_id] for event_id, at in received if event_id)
    return {
        "subscribers": subscribers,
        "streams_per_connection": per_channel,
        "client_processes": workers,
        "delivered": len(delays),
        "connect_s": round(connect_s, 2),
        "p50_ms": round(percentile(delays, 0.5) * 1000, 1),
        "p99_ms": round(percentile(delays, 0.99) * 1000, 1),
        "max_ms": round(delays[-1] * 1000, 1),
        "rss_idle_kib": rss_before,
        "rss_subscribed_kib": rss_after,
        "rss_per_subscriber_kib": round((rss_after - rss_before) / subscribers, 2),
    }


def upgrade_request(port: int, token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {WS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()


async def raw_upgrade(port: int, token: str) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(upgrade_request(port, token))
    head = b""
    while b"\r\n\r\n" not in head:
        if not (chunk := await stream.receive_some(4096)):
            raise RuntimeError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {head[:60]!r}")
    return stream


def websocket_worker(port: int, token: str, clean: int, raw: int, conn: Connection) -> None:
    """A client process: ``clean`` trio-websocket subscribers and ``raw`` raw-socket ones;
    says "open", waits for "close", then closes the first with close frames, resets the
    others and leaves ``raw`` more handshakes half-way; says "closed"."""

    async def main() -> None:
        url = f"ws://127.0.0.1:{port}{WS_PATH}"
        headers = [(b"authorization", f"Bearer {token}".encode())]
        leave = trio.Event()
        raws: list[trio.SocketStream] = []

        async def one(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            # Room for the run's heartbeats: trio-websocket answers pings only while its
            # queue has room, and the daemon closes a peer that leaves pings unanswered.
            async with open_websocket_url(url, extra_headers=headers, message_queue_size=64):
                task_status.started()
                await leave.wait()  # then a close frame, answered

        async with trio.open_nursery() as nursery:
            for _ in range(clean):
                await nursery.start(one)
            for _ in range(raw):
                raws.append(await raw_upgrade(port, token))
                nursery.start_soon(answer_pings, raws[-1])
            conn.send("open")
            await trio.to_thread.run_sync(conn.recv)
            leave.set()
            for stream in raws:  # RST: no close frame, no FIN
                linger = struct.pack("ii", 1, 0)
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                await stream.aclose()
            for _ in range(raw):  # the upgrade sent, the socket closed without a word
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(upgrade_request(port, token))
        conn.send("closed")

    trio.run(main)
    conn.close()


def websocket_idle(subscribers: int, workers: int) -> dict[str, Any]:
    """Idle WebSocket subscribers: RSS each, the gauge and RSS after they all went."""
    with processes() as procs:
        sim = procs.sim()
        daemon = procs.daemon(
            sim,
            MARVELD_NOTIFICATIONS_HEARTBEAT=f"{WS_HEARTBEAT_SECONDS:g}s",
            MARVELD_HTTP_MAX_CONNECTIONS=str(2 * subscribers + 100),
        )
        procs.wait_ready()
        auth = grpc_call(daemon.grpc_port, lambda ch: login(ch, "Sockets"))
        token = auth["authorization"].removeprefix("Bearer ")
        wait_for(lambda: gauges(daemon, WS_SUBSCRIBERS)[0] == 0, "the metrics")
        rss_before = rss_kib(daemon.pid)
        ctx = multiprocessing.get_context("spawn")
        pipes, children = [], []
        for w in range(workers):
            count = subscribers // workers + (w < subscribers % workers)
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=websocket_worker,
                args=(daemon.http_port, token, count - count // 3, count // 3, child),
            )
            proc.start()
            pipes.append(parent)
            children.append(proc)
        try:
            for parent in pipes:
                if not parent.poll(WAIT_SECONDS) or parent.recv() != "open":
                    raise RuntimeError("a client process did not open its sockets")
            wait_for(
                lambda: gauges(daemon, WS_SUBSCRIBERS)[0] == subscribers,
                f"{subscribers} websocket subscribers",
            )
            time.sleep(WS_HEARTBEAT_SECONDS + 1)  # a figure: one heartbeat went to each
            gauge_open = gauges(daemon, WS_SUBSCRIBERS)[0]
            rss_open = rss_kib(daemon.pid)
            for parent in pipes:
                parent.send("close")
            for parent in pipes:
                if not parent.poll(WAIT_SECONDS) or parent.recv() != "closed":
                    raise RuntimeError("a client process did not close its sockets")
            wait_for(lambda: gauges(daemon, WS_SUBSCRIBERS)[0] == 0, "no websocket subscriber")
            # The daemon trims its heap at most TRIM_INTERVAL_SECONDS after a flood closes.
            time.sleep(TRIM_INTERVAL_SECONDS + 1)
            rss_after = rss_kib(daemon.pid)
            gauge_after = gauges(daemon, WS_SUBSCRIBERS)[0]
        finally:
            for proc in children:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
    return {
        "subscribers": subscribers,
        "client_processes": workers,
        "gauge_open": gauge_open,
        "gauge_after_close": gauge_after,
        "rss_idle_kib": rss_before,
        "rss_subscribed_kib": rss_open,
        "rss_after_close_kib": rss_after,
        "rss_per_subscriber_kib": round((rss_open - rss_before) / subscribers, 2),
        "rss_after_vs_idle_pct": round(100 * (rss_after - rss_before) / rss_before, 1),
    }


def seed(db: Path, user_email: str, count: int) -> None:
    """``count`` notifications for one user, copies of its newest one's event."""
    with closing(sqlite3.connect(db)) as conn, conn:
        (user_id,) = conn.execute("SELECT id FROM users WHERE email = ?", (user_email,)).fetchone()
        event = conn.execute(
            "SELECT stream_id, correlation_id, type, created_at, occurred_at, data FROM events"
            " WHERE type = 'CharacterUpdated' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        note = conn.execute(
            "SELECT type, message, created_at FROM notifications ORDER BY cursor DESC LIMIT 1"
        ).fetchone()
        start = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
        conn.executemany(
            "INSERT INTO events (seq, id, stream_id, correlation_id, type, created_at,"
            " occurred_at, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ((start + i, str(uuid.uuid4()), *event) for i in range(1, count + 1)),
        )
        conn.executemany(
            "INSERT INTO notifications (id, type, message, recipient_id, event_seq, cursor,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (str(uuid.uuid4()), note[0], note[1], user_id, start + i, start + i, note[2])
                for i in range(1, count + 1)
            ),
        )
        conn.execute(
            "UPDATE sync_state SET value = ? WHERE key = 'notify.position'",
            (str(start + count),),
        )


def replay(count: int) -> dict[str, Any]:
    with processes() as procs:
        sim, daemon, db, admin, auth = synced_daemon(procs, "Replay")
        httpx.post(
            f"{sim.base_url}/_sim/characters/{SPIDER_MAN}",
            json={"description": "Seed."},
            params={"webhook": "false"},
            timeout=10,
        ).raise_for_status()
        trigger_sync(daemon.grpc_port, admin)
        wait_for(lambda: _notes(db) > 0, "the seed notification")
        seed(db, "replay@example.com", count)

        async def read_all(channel: Channel) -> tuple[int, float]:
            got, started = 0, time.monotonic()
            async with subscribe(channel, auth) as stream:
                await stream.send_message(pb.SubscribeRequest(after_cursor=0), end=True)
                while (note := await stream.recv_message()) is not None:
                    got += not note.heartbeat
                    if got >= count:
                        elapsed = time.monotonic() - started
                        await stream.cancel()
                        return got, elapsed
            return got, time.monotonic() - started

        got, elapsed = grpc_call(daemon.grpc_port, read_all)
    return {
        "seeded": count,
        "received": got,
        "seconds": round(elapsed, 2),
        "notifications_per_s": round(got / elapsed),
    }


def _notes(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT count(*) FROM notifications").fetchone()[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--websockets", type=int, default=1_500)
    parser.add_argument("--replay", type=int, default=100_000)
    args = parser.parse_args(argv)
    results = {
        "fan_out": fan_out(args.subscribers, args.workers),
        # As many gRPC streams as WebSockets, one a connection as each WebSocket has.
        "fan_out_1": fan_out(args.websockets, args.workers, per_channel=1),
        "websocket": websocket_idle(args.websockets, args.workers),
        "replay": replay(args.replay),
    }
    print(f"{'benchmark':<10} {'figure':<26} value")
    for name, figures in results.items():
        for key, value in figures.items():
            print(f"{name:<10} {key:<26} {value}")
    print("idle subscriber, RSS each:")
    for name in ("fan_out", "fan_out_1", "websocket"):
        r = results[name]
        kind = "WebSocket  " if name == "websocket" else "gRPC stream"
        each = r.get("streams_per_connection", 1)
        print(
            f"  {kind} {r['rss_per_subscriber_kib']:>7} KiB"
            f"  ({r['subscribers']} subscribers, {each} a connection)"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "notifications.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
