"""Several real ``marveld serve`` processes on one PostgreSQL database: a cluster for tests.

Each replica runs as ``python -m marveld serve`` on free ports of its own, with the same
secrets, upstream (the test's simulator) and database; its log is a file in the test's
temp folder (shown when a test fails). Every process started is killed on the way out.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from bench.harness import free_port
from marveld import daemon
from marveld.sim import SimHandle
from tests.aio import grpc_client
from tests.conftest import Running, daemon_env, make_settings
from tests.test_notify_crash import healthy
from tests.waiting import wait_until

ROOT = Path(__file__).parents[1]
START_SECONDS = 30


@dataclass
class Replica:
    name: str
    m: Running  # settings, endpoints, simulator, gRPC client
    proc: trio.Process
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no handler runs, its connections drop as the kernel closes
        them."""
        self.proc.kill()
        with trio.fail_after(10):
            await self.proc.wait()

    async def metrics(self) -> str:
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(f"{self.m.http}/metrics")).text

    async def metric(self, name: str, labels: str = "") -> float:
        """The value of one series (0 when absent), e.g. ``metric("marveld_leader")``."""
        series = re.escape(name + (f"{{{labels}}}" if labels else ""))
        found = re.search(rf"^{series} (\S+)$", await self.metrics(), re.MULTILINE)
        return float(found.group(1)) if found else 0.0


def distinct_ports(n: int) -> list[int]:
    """``n`` free ports, no two the same (free_port alone may give one twice)."""
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


async def start_replica(
    tmp_path: Path,
    sim: SimHandle,
    url: str,
    name: str,
    ports: tuple[int, int] | None = None,
    **env: str,
) -> tuple[Replica, AsyncExitStack]:
    """One replica, serving once this returns, on ``ports`` (gRPC, HTTP; default: free
    ones); close the stack to stop it (SIGTERM, or nothing if the test killed it)."""
    grpc_port, http_port = ports or tuple(distinct_ports(2))
    overrides = {
        "MARVELD_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
        "MARVELD_HTTP_LISTEN": f"127.0.0.1:{http_port}",
        "MARVELD_DATABASE_URL": url,
        "MARVELD_REPLICA_ID": name,
        "MARVELD_NOTIFICATIONS_HEARTBEAT": "0.2s",
        "MARVELD_LOG_FORMAT": "text",
        **env,
    }
    settings = make_settings(tmp_path, sim.url, **overrides)
    environ = {**os.environ, **daemon_env(tmp_path, sim.url), **overrides}
    del environ["MARVELD_DATABASE_PATH"]
    config = tmp_path / "marveld.toml"
    config.touch()
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "marveld", "serve", "--config", str(config)],
            env=environ,
            cwd=ROOT,
            stderr=out,
        )
    stack = AsyncExitStack()
    stack.push_async_callback(_stop, proc)
    try:
        endpoints = daemon.Endpoints(
            grpc_port=int(overrides["MARVELD_GRPC_LISTEN"].rsplit(":", 1)[1]),
            http_port=int(overrides["MARVELD_HTTP_LISTEN"].rsplit(":", 1)[1]),
        )
        await wait_until(
            lambda: _started(proc, endpoints.http_port),
            seconds=START_SECONDS,
            what=f"replica {name} serving",
        )
        if proc.returncode is not None:
            raise AssertionError(f"replica {name} exited {proc.returncode}: {log.read_text()}")
        client = await stack.enter_async_context(grpc_client(endpoints.grpc_port))
    except BaseException:
        await stack.aclose()
        raise
    return Replica(name, Running(settings, endpoints, sim, client), proc, log), stack


async def _started(proc: trio.Process, http_port: int) -> bool:
    return proc.returncode is not None or await healthy(http_port)


async def _stop(proc: trio.Process) -> None:
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(15):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def cluster(
    tmp_path: Path, sim: SimHandle, url: str, n: int = 3, **env: str
) -> AsyncIterator[list[Replica]]:
    """``n`` replicas (``r1`` ... ``rn``) on the database at ``url``, started together."""
    async with AsyncExitStack() as stack:
        replicas: dict[str, Replica] = {}

        ports = distinct_ports(2 * n)  # chosen at once: no two replicas get the same

        async def one(i: int) -> None:
            name = f"r{i}"
            pair = (ports[2 * i - 2], ports[2 * i - 1])
            replica, stopping = await start_replica(tmp_path, sim, url, name, pair, **env)
            stack.push_async_callback(stopping.aclose)
            replicas[name] = replica

        try:
            async with trio.open_nursery() as nursery:
                for i in range(1, n + 1):
                    nursery.start_soon(one, i)
            yield [replicas[f"r{i}"] for i in range(1, n + 1)]
        except BaseException:
            for replica in replicas.values():
                print(f"--- {replica.name} log ---\n{replica.log.read_text()[-6000:]}")
            raise


async def leaders(replicas: list[Replica]) -> list[Replica]:
    """The live replicas that say they lead."""
    return [r for r in replicas if r.alive and await r.metric("marveld_leader") == 1.0]


async def subscribed(replicas: list[Replica], n: int) -> bool:
    """Whether the replicas' subscriber gauges (gRPC and WebSocket) add up to ``n`` or more."""
    total = 0.0
    for r in replicas:
        for channel in ("grpc", "websocket"):
            total += await r.metric("marveld_notification_subscribers", f'channel="{channel}"')
    return total >= n
