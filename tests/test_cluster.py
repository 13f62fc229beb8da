"""A rolling restart of three replicas behind a real load balancer loses nothing.

HAProxy runs with the shipped configuration (config/haproxy.cfg, tests/haproxy.py) in
front of 3 real ``marveld serve`` processes on one PostgreSQL database. A gRPC client of
another implementation (grpcio, with the shipped service config and its retry policy)
keeps a steady load of unary calls on the load balancer, and 100 subscribers (50 gRPC
streams, 50 WebSockets) follow their notifications through it while each replica in turn
gets SIGTERM, drains, exits and is started again on the same ports, and changes are
synced meanwhile. No unary call fails, every replica exits 0, and every subscriber
resumes (with its cursor, wherever the load balancer sends it) and receives every change
once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import threading
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import httpx
import pytest
import trio
from grpclib.exceptions import GRPCError, StreamTerminatedError
from trio_websocket import ConnectionClosed, HandshakeError

from marveld import daemon
from marveld.proto.marvel import v1 as pb
from marveld.sim import SimHandle
from tests.aio import AioClient, grpc_client
from tests.calls import register_and_login
from tests.conftest import Running
from tests.haproxy import SERVICE_CONFIG, Backend, LoadBalancer, haproxy, load_balancer
from tests.notify_clients import websocket, ws_next
from tests.replicas import Replica, distinct_ports, start_replica, subscribed
from tests.test_notifications import HULK, change
from tests.test_notify_crash import CAPTAIN_AMERICA
from tests.test_sync import SPIDER_MAN, make_admin, trigger_sync
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(300)

NAMES = ("r1", "r2", "r3")
USERS = 10
SUBSCRIBERS = 100  # half gRPC streams, half WebSockets, all through the load balancer
CHANGES = 24
DRAIN = {"MARVELD_SHUTDOWN_DRAIN_DELAY": "3s", "MARVELD_SHUTDOWN_GRACE": "10s"}
LOAD_THREADS = 2
CALL_SECONDS = 5.0


@dataclass
class Subscriber:
    auth: dict[str, str]
    kind: str  # "grpc" or "ws"
    got: list[tuple[int, str]] = field(default_factory=list)
    streams: int = 0  # how many times it (re)subscribed

    @property
    def cursor(self) -> int:
        return self.got[-1][0] if self.got else 0  # 0: everything (no one had any before)


class Load:
    """Unary calls from grpcio threads, one after another, until stopped: each call's
    outcome, and whether the correlation id came back through the load balancer."""

    def __init__(self, port: int, auth: dict[str, str]) -> None:
        self._target = f"127.0.0.1:{port}"
        self._auth = auth
        self._stop = threading.Event()
        self.ok = 0
        self.failed: list[str] = []
        self.echoed = 0  # answers carrying the x-request-id sent as x-correlation-id

    def run(self, worker: int) -> None:
        options = [
            ("grpc.service_config", SERVICE_CONFIG.read_text()),
            ("grpc.enable_retries", 1),
        ]
        with grpc.insecure_channel(self._target, options=options) as channel:
            call = channel.unary_unary("/marvel.v1.CharacterService/ListCharacters")
            names = itertools.cycle(("Hulk", "Spider-Man", "Captain America"))
            for n in itertools.count():
                if self._stop.is_set():
                    return
                request_id = f"load-{worker}-{n}"
                request = bytes(pb.ListCharactersRequest(name=next(names)))
                metadata = (("authorization", self._auth["authorization"]),)
                try:
                    _, answer = call.with_call(
                        request,
                        timeout=CALL_SECONDS,
                        metadata=(*metadata, ("x-request-id", request_id)),
                    )
                except grpc.RpcError as exc:
                    self.failed.append(f"{exc.code()}: {exc.details()}")
                    continue
                self.ok += 1
                headers = dict(answer.initial_metadata())
                self.echoed += headers.get("x-correlation-id") == request_id

    def stop(self) -> None:
        self._stop.set()


async def test_a_rolling_restart_behind_haproxy_fails_no_call_and_loses_no_notification(
    sim: SimHandle, tmp_path: Path, postgres_url: str
) -> None:
    haproxy()  # skip (or fail under CI) first, before anything starts
    ports = distinct_ports(9)
    backends = [Backend(n, ports[2 * i], ports[2 * i + 1]) for i, n in enumerate(NAMES)]
    pick = itertools.cycle((HULK, SPIDER_MAN, CAPTAIN_AMERICA))
    changes = [(next(pick), f"Rolling change {i}.") for i in range(1, CHANGES + 1)]
    async with AsyncExitStack() as stack:
        replicas: dict[str, Replica] = {}
        stops: dict[str, AsyncExitStack] = {}

        async def start(b: Backend, generation: int) -> None:
            folder = tmp_path / f"{b.name}-{generation}"
            folder.mkdir()
            replica, stopping = await start_replica(
                folder, sim, postgres_url, b.name, (b.grpc_port, b.http_port), **DRAIN
            )
            stack.push_async_callback(stopping.aclose)
            replicas[b.name], stops[b.name] = replica, stopping

        async with trio.open_nursery() as nursery:
            for b in backends:
                nursery.start_soon(start, b, 0)
        lb = await stack.enter_async_context(
            load_balancer(tmp_path, (ports[6], ports[7], ports[8]), backends)
        )
        through = await stack.enter_async_context(grpc_client(lb.grpc_port))
        m = Running(
            replicas["r1"].m.settings,
            daemon.Endpoints(lb.grpc_port, lb.http_port),
            sim,
            through,
        )
        admin = await make_admin(m)
        await trigger_sync(m, admin)  # the bulk import: no notifications
        users = [await register_and_login(m, f"fan{u}@example.com") for u in range(USERS)]
        subscribers = [
            Subscriber(users[i % USERS], "grpc" if i % 2 == 0 else "ws") for i in range(SUBSCRIBERS)
        ]
        load = Load(lb.grpc_port, users[0])
        exits: dict[str, int | None] = {}

        async def rolling_restart() -> None:
            for b in backends:
                old = replicas[b.name]
                old.proc.send_signal(signal.SIGTERM)
                with trio.fail_after(30):
                    exits[b.name] = await old.proc.wait()
                await stops[b.name].aclose()
                assert "drained: every call answered" in old.log.read_text()
                await start(b, 1)
                await wait_until(lambda: lb.up(*NAMES), seconds=20, what=f"{b.name} UP again")

        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_grpc_subscribers, through, subscribers)
                for s in subscribers:
                    if s.kind == "ws":
                        nursery.start_soon(_ws_subscriber, lb, s)
                await wait_until(
                    lambda: subscribed(list(replicas.values()), SUBSCRIBERS),
                    seconds=30,
                    what="every subscriber live",
                )
                for worker in range(LOAD_THREADS):
                    nursery.start_soon(
                        partial(trio.to_thread.run_sync, load.run, worker, abandon_on_cancel=True)
                    )
                restarted = trio.Event()

                async def restart_then_signal() -> None:
                    await rolling_restart()
                    restarted.set()

                nursery.start_soon(restart_then_signal)
                for i, (marvel_id, text) in enumerate(changes):
                    await change(m, marvel_id, text, webhook=False)
                    await trigger_sync(m, admin)
                    if i < CHANGES - 1 and not restarted.is_set():
                        await trio.sleep(0.5)  # spread the changes over the restarts
                await restarted.wait()
                load.stop()
                await wait_until(
                    lambda: all(len(s.got) >= CHANGES for s in subscribers),
                    seconds=60,
                    what="every subscriber has every change",
                )
                nursery.cancel_scope.cancel()

        assert exits == {name: 0 for name in NAMES}
        streams = sum(s.streams for s in subscribers)
        print(
            f"\nrolling restart: {load.ok} unary calls answered, {len(load.failed)} failed;"
            f" {SUBSCRIBERS} subscribers resumed {streams - SUBSCRIBERS} times"
        )
        assert load.failed == []
        assert load.ok > 0
        assert load.echoed == load.ok  # x-request-id came back as x-correlation-id
        expected = [text for _, text in changes]
        for s in subscribers:
            assert [text for _, text in s.got] == expected
            cursors = [cursor for cursor, _ in s.got]
            assert cursors == sorted(set(cursors))  # in order, none twice
            assert s.streams >= 2  # every replica restarted: each subscriber moved
        async with httpx.AsyncClient(timeout=5) as http:  # HTTP passes the id through too
            answer = await http.get(f"{lb.http}/healthz", headers={"x-request-id": "lb-check"})
        assert answer.headers["x-correlation-id"] == "lb-check"
        logged = lb.log.read_text()
        assert "GET /v1/notifications/ws HTTP/1.1" in logged  # the path, not its query
        assert not any(u["authorization"][7:] in logged for u in users)  # no token


async def _grpc_subscribers(client: AioClient, subscribers: list[Subscriber]) -> None:
    """Every gRPC subscriber on one connection to the load balancer (HAProxy balances each
    stream), resuming from its cursor whenever its stream ends, until it has every change."""

    async def follow(s: Subscriber) -> None:
        stub = pb.NotificationServiceStub(client.channel)
        while len(s.got) < CHANGES:
            s.streams += 1
            request = pb.SubscribeRequest(after_cursor=s.cursor)
            with contextlib.suppress(GRPCError, StreamTerminatedError, ConnectionError, OSError):
                async for note in stub.subscribe(request, metadata=s.auth, timeout=200):
                    if not note.heartbeat:
                        s.got.append((note.cursor, note.character.description))
                        if len(s.got) == CHANGES:
                            return
            await asyncio.sleep(0.1)  # a pause before resuming, as a client backs off

    async def every() -> None:
        await asyncio.gather(*(follow(s) for s in subscribers if s.kind == "grpc"))

    done = asyncio.run_coroutine_threadsafe(every(), client._loop)
    try:
        await trio.to_thread.run_sync(done.result, 250, abandon_on_cancel=True)
    finally:
        done.cancel()


async def _ws_subscriber(lb: LoadBalancer, s: Subscriber) -> None:
    while len(s.got) < CHANGES:
        s.streams += 1
        query = f"?access_token={s.auth['authorization'][7:]}&after_cursor={s.cursor}"
        with contextlib.suppress(OSError, ConnectionClosed, HandshakeError):
            async with websocket(lb.http_port, query) as ws:
                while len(s.got) < CHANGES:
                    message = await ws_next(ws, seconds=60, heartbeats=True)
                    if not message["heartbeat"]:
                        s.got.append((int(message["cursor"]), message["character"]["description"]))
        if len(s.got) < CHANGES:
            await trio.sleep(0.1)  # a pause before resuming, as a client backs off
