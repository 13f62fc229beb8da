"""The cache benchmarks of issue 3, live, on loopback, each figure beside its reference.

Starts ``marveld sim`` and ``marveld serve`` as subprocesses (see bench/harness.py) and
calls the daemons from this process (and, for one comparison, from two client processes)
with grpclib:

1. cache-hit ListCharacters at 64 in flight: calls/s, p50/p99, and the daemon's CPU per
   call (utime+stime from /proc) against grpc.health.v1.Health/Check, measured alike;
2. memory-tier hit vs SQLite-tier hit (a daemon with the memory tier off) vs miss, one
   call at a time, simulator latency 0;
3. 1,000 concurrent identical misses (upstream calls: the simulator's own counter), once
   with a simulator slow enough that they all overlap and once with one whose answer
   comes in the middle of the burst; and 1,000 concurrent distinct misses;
4. miss overhead: daemon miss latency minus the simulator's, both measured, alternating;
5. a miss storm of distinct queries against a small daily upstream budget.

Each measurement runs a few rounds; every figure printed is the median over the rounds
(all rounds are in bench/results/cache.json).

    .venv/bin/python -m bench.cache [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from bench.harness import (
    PRIVATE_KEY,
    PUBLIC_KEY,
    RESULTS,
    TIMEOUT,
    Daemon,
    Processes,
    Sim,
    login,
    percentile,
    processes,
)
from marveld.proto.marvel import v1 as pb

LIST_CHARACTERS = "/marvel.v1.CharacterService/ListCharacters"
INFLIGHT = 64
PAGE = 20  # characters per page, every query below
CATALOGUE = 1500  # characters in the simulator's generated catalogue
ORDERS = ("name", "-name", "modified", "-modified")
HOT = pb.ListCharactersRequest(limit=PAGE)  # the one query the hit benchmarks repeat
SLOW_CALL_TIMEOUT = 30.0  # for calls that wait on a slow simulator behind a queue
IDLE_CHILD_SECONDS = 180.0
STREAMS_PER_CHANNEL = 90  # below the server's 100 concurrent streams per connection
STATUS_NAMES: dict[int, str] = {int(s.value): str(s.name) for s in pb.CacheStatus}
HIT_VARIANTS = ("health", "hit", "hit_decoding_client", "health_2_clients", "hit_2_clients")


@dataclass(frozen=True)
class Plan:
    """How much to do: the full run, or ``--quick`` to check the wiring."""

    rounds: int = 3
    throughput_calls: int = 6000  # per variant and round, at 64 in flight
    decoding_calls: int = 2000  # the betterproto2-decoding client, per round
    sequential_hits: int = 1000  # per tier and round
    sequential_misses: int = 200  # per round
    herd: int = 1000  # identical concurrent misses
    distinct: int = 1000  # distinct concurrent misses
    herd_latency_ms: float = 1000.0  # long enough for every identical call to overlap
    distinct_latency_ms: float = 300.0  # also identical calls that end mid-burst
    overhead_calls: int = 60  # pairs (simulator alone, daemon miss) per round
    overhead_latency_ms: float = 20.0
    storm: int = 20000
    storm_budget: int = 1000
    phase_seconds: float = 60.0  # no loop issues calls for longer than this


FULL = Plan()
QUICK = Plan(
    rounds=2,
    throughput_calls=1000,
    decoding_calls=500,
    sequential_hits=200,
    sequential_misses=40,
    herd=300,
    distinct=300,
    overhead_calls=15,
    storm=3000,
    storm_budget=300,
    phase_seconds=30.0,
)


# --- the client -------------------------------------------------------------------------------


class RawCodec(ProtoCodec):
    """grpclib's protobuf codec, except that ``bytes`` go out as they are and a reply of
    type ``bytes`` comes back undecoded: the client then costs little beside the daemon,
    so the figures are the daemon's. The cache status is read from the raw page."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes):
            return message
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is bytes:
            return data
        return super().decode(data, message_type)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def cache_status(page: bytes) -> str:
    """``CharacterPage.cache_status`` (field 7) of an encoded page, by walking its top-level
    fields (the last value wins, as in any protobuf parser): HIT, MISS, STALE."""
    status, i, end = 0, 0, len(page)
    while i < end:
        key, i = _varint(page, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(page, i)
            if key >> 3 == 7:
                status = value
        elif wire == 2:
            length, i = _varint(page, i)
            i += length
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire} in a CharacterPage")
    return STATUS_NAMES.get(status, str(status))


def failure(exc: BaseException) -> str:
    """How a call ended when it did not return: a status name, 'budget' refusals apart."""
    if isinstance(exc, GRPCError):
        if exc.status is Status.UNAVAILABLE and "budget" in (exc.message or ""):
            return "UNAVAILABLE (budget)"
        return exc.status.name
    if isinstance(exc, TimeoutError):
        return "client timeout"
    if isinstance(exc, StreamTerminatedError | ConnectionError):
        return "connection error"
    return type(exc).__name__


def encode_request(request: pb.ListCharactersRequest) -> bytes:
    return bytes(request)


def distinct_requests(count: int) -> list[pb.ListCharactersRequest]:
    """``count`` queries, all different from each other and from ``HOT``, each a full page
    of 20 characters (4 orders x offsets 1..1480)."""
    offsets = CATALOGUE - PAGE  # 1..1480 keep a page full
    if count > offsets * len(ORDERS):
        raise ValueError("not that many distinct full pages")
    return [
        pb.ListCharactersRequest(limit=PAGE, offset=1 + n % offsets, order_by=ORDERS[n // offsets])
        for n in range(count)
    ]


def distinct_queries(count: int) -> list[bytes]:
    return [encode_request(r) for r in distinct_requests(count)]


class Client:
    """grpclib channels to one daemon: raw-bytes ListCharacters, health, a user's token."""

    def __init__(self, port: int, channels: int = 1) -> None:
        self.channels = [Channel("127.0.0.1", port, codec=RawCodec()) for _ in range(channels)]
        self._list = [
            UnaryUnaryMethod[bytes, bytes](c, LIST_CHARACTERS, bytes, bytes) for c in self.channels
        ]
        self._health = [HealthStub(c) for c in self.channels]
        self.metadata: dict[str, str] = {}

    async def login(self, name: str = "Bench") -> None:
        self.metadata = await login(self.channels[0], name)

    async def page(self, request: bytes, n: int = 0, seconds: float = TIMEOUT) -> bytes:
        """One ListCharacters on channel ``n % channels``: the encoded page."""
        method = self._list[n % len(self._list)]
        return await method(request, metadata=self.metadata, timeout=seconds)

    async def list(self, request: bytes, n: int = 0, seconds: float = TIMEOUT) -> str:
        """One ListCharacters: its cache status, or how it failed."""
        try:
            page = await self.page(request, n, seconds)
        except (GRPCError, StreamTerminatedError, ConnectionError, TimeoutError) as exc:
            return failure(exc)
        return cache_status(page)

    async def health(self, n: int = 0) -> str:
        try:
            reply = await self._health[n % len(self._health)].Check(
                HealthCheckRequest(), timeout=TIMEOUT
            )
        except (GRPCError, StreamTerminatedError, ConnectionError, TimeoutError) as exc:
            return failure(exc)
        return str(HealthCheckResponse.ServingStatus.Name(reply.status))

    async def list_decoded(self, n: int = 0) -> str:
        """ListCharacters through the generated betterproto2 stub, decoding the whole page."""
        stub = pb.CharacterServiceStub(self.channels[n % len(self.channels)])
        try:
            page = await stub.list_characters(HOT, metadata=self.metadata, timeout=TIMEOUT)
        except (GRPCError, StreamTerminatedError, ConnectionError, TimeoutError) as exc:
            return failure(exc)
        return STATUS_NAMES.get(page.cache_status.value, "?")

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


# --- measuring --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # fields 3.. of proc(5); the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One batch of calls: their latencies and outcomes, wall time and CPU times."""

    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    client_cpu: float = 0.0
    daemon_cpu: float = 0.0
    stopped_early: bool = False

    @property
    def calls(self) -> int:
        return len(self.latencies)

    def figures(self, *, cpu: bool = True) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        out: dict[str, Any] = {
            "calls": self.calls,
            "wall_s": self.wall,
            "calls_per_s": self.calls / self.wall if self.wall else 0.0,
            "p50_ms": statistics.median(ordered) * 1000 if ordered else math.nan,
            "p99_ms": percentile(ordered, 0.99) * 1000 if ordered else math.nan,
            "outcomes": dict(self.outcomes),
        }
        if self.stopped_early:
            out["stopped_early"] = True
        if cpu:
            out |= {
                "daemon_cpu_s": self.daemon_cpu,
                "daemon_cpu_us_per_call": self.daemon_cpu / self.calls * 1e6 if self.calls else 0,
                "calls_per_daemon_cpu_s": self.calls / self.daemon_cpu if self.daemon_cpu else 0,
                "daemon_busy": self.daemon_cpu / self.wall if self.wall else 0.0,
                "client_busy": self.client_cpu / self.wall if self.wall else 0.0,
            }
        return out


async def run_calls(
    call: Callable[[int], Awaitable[str]],
    total: int,
    inflight: int,
    *,
    seconds: float,
    daemon: Daemon | None = None,
) -> Run:
    """``call(0)`` .. ``call(total - 1)``, ``inflight`` at a time; no new call starts after
    ``seconds`` (each call has its own timeout). Measures the daemon's CPU if given."""
    run = Run()
    numbers = iter(range(total))
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        for n in numbers:
            started = time.perf_counter()
            if started > deadline:
                run.stopped_early = True
                return
            outcome = await call(n)
            run.latencies.append(time.perf_counter() - started)
            run.outcomes[outcome] += 1

    cpu_before = cpu_seconds(daemon.pid) if daemon else 0.0
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(inflight, total))))
    run.wall = time.perf_counter() - started
    run.client_cpu = time.process_time() - client_before
    run.daemon_cpu = cpu_seconds(daemon.pid) - cpu_before if daemon else 0.0
    return run


def medians(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric figure's median over the rounds; outcomes summed."""
    out: dict[str, Any] = {}
    for key, value in rounds[0].items():
        if isinstance(value, bool):
            out[key] = any(r.get(key) for r in rounds)
        elif isinstance(value, int | float):
            out[key] = statistics.median(r[key] for r in rounds)
        elif isinstance(value, dict):
            total: Counter[str] = Counter()
            for r in rounds:
                total.update(r[key])
            out[key] = dict(total)
    return out


# --- 1. hits at 64 in flight ----------------------------------------------------------------


def _client_process(conn: Connection, port: int, metadata: dict[str, str]) -> None:
    """A second client process: runs the batches the parent sends, reports each."""
    asyncio.run(_serve_parent(conn, port, metadata))


async def _serve_parent(conn: Connection, port: int, metadata: dict[str, str]) -> None:
    client = Client(port)
    client.metadata = metadata
    hot = encode_request(HOT)
    try:
        for _ in range(50):  # warm-up: connect, first calls
            await client.list(hot)
            await client.health()
        conn.send("ready")
        while conn.poll(IDLE_CHILD_SECONDS):  # the parent is gone if it stays silent
            command = conn.recv()
            if command[0] == "stop":
                return
            _, kind, total, inflight, seconds = command
            calls: Callable[[int], Awaitable[str]] = (
                client.health if kind == "health" else lambda n: client.list(hot, n)
            )
            wall_start = time.monotonic()
            run = await run_calls(calls, total, inflight, seconds=seconds)
            conn.send(
                {
                    "start": wall_start,
                    "end": wall_start + run.wall,
                    "latencies": run.latencies,
                    "outcomes": dict(run.outcomes),
                    "client_cpu": run.client_cpu,
                    "stopped_early": run.stopped_early,
                }
            )
    finally:
        client.close()
        conn.close()


class ClientProcesses:
    """``count`` client processes against one daemon, each running part of every batch."""

    def __init__(self, count: int, port: int, metadata: dict[str, str]) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for _ in range(count):
            parent, child = context.Pipe()
            proc = context.Process(
                target=_client_process, args=(child, port, metadata), daemon=True
            )
            proc.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(proc)
        for pipe in self._pipes:
            self._receive(pipe, 60)

    @staticmethod
    def _receive(pipe: Connection, seconds: float) -> Any:
        # Blocking on purpose: the parent's own calls are idle while the children run.
        if not pipe.poll(seconds):
            raise RuntimeError(f"a client process did not answer in {seconds:.0f}s")
        return pipe.recv()

    def run(self, kind: str, total: int, inflight: int, daemon: Daemon, seconds: float) -> Run:
        """``total`` calls split evenly, ``inflight`` split evenly, all processes at once."""
        count = len(self._pipes)
        cpu_before = cpu_seconds(daemon.pid)
        for pipe in self._pipes:
            pipe.send(("run", kind, total // count, inflight // count, seconds))
        reports = [self._receive(pipe, seconds + 60) for pipe in self._pipes]
        daemon_cpu = cpu_seconds(daemon.pid) - cpu_before
        run = Run(daemon_cpu=daemon_cpu)
        for report in reports:
            run.latencies += report["latencies"]
            run.outcomes.update(report["outcomes"])
            run.client_cpu += report["client_cpu"]
            run.stopped_early |= report["stopped_early"]
        run.wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
        return run

    def close(self) -> None:
        for pipe, proc in zip(self._pipes, self._procs, strict=True):
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
            proc.join(10)
            if proc.exitcode is None:
                proc.terminate()
                proc.join(10)
            pipe.close()


async def bench_hits(daemon: Daemon, plan: Plan) -> dict[str, Any]:
    client = Client(daemon.grpc_port, channels=2)
    helpers: ClientProcesses | None = None
    try:
        await client.login("Hits")
        hot = encode_request(HOT)
        assert await client.list(hot) == "MISS"
        for n in range(200):  # warm-up
            await client.list(hot, n)
            await client.health(n)
        helpers = ClientProcesses(2, daemon.grpc_port, client.metadata)
        total, seconds = plan.throughput_calls, plan.phase_seconds

        def hit(n: int) -> Awaitable[str]:
            return client.list(hot, n)

        rounds = []
        calls = {"health": client.health, "hit": hit}
        for r in range(plan.rounds):
            # Health checks and hits take turns going first, so that a drift in the
            # machine's load favours neither.
            pair = ("health", "hit") if r % 2 == 0 else ("hit", "health")
            one: dict[str, Run] = {}
            for kind in pair:
                one[kind] = await run_calls(
                    calls[kind], total, INFLIGHT, seconds=seconds, daemon=daemon
                )
            one["hit_decoding_client"] = await run_calls(
                client.list_decoded, plan.decoding_calls, INFLIGHT, seconds=seconds, daemon=daemon
            )
            for kind in pair:
                one[f"{kind}_2_clients"] = helpers.run(kind, total, INFLIGHT, daemon, seconds)
            figures: dict[str, Any] = {name: one[name].figures() for name in HIT_VARIANTS}
            for suffix in ("", "_2_clients"):
                hit_cpu = figures["hit" + suffix]["daemon_cpu_us_per_call"]
                health_cpu = figures["health" + suffix]["daemon_cpu_us_per_call"]
                figures["cpu_ratio" + suffix] = {"hit_over_health": hit_cpu / health_cpu}
            rounds.append(figures)
        result = {name: medians([r[name] for r in rounds]) for name in rounds[0]}
        return {**result, "rounds": rounds, "page_bytes": len(await client.page(hot))}
    finally:
        if helpers is not None:
            helpers.close()
        client.close()


# --- 2. memory tier vs SQLite tier vs miss ------------------------------------------------


async def bench_tiers(memory: Daemon, sqlite: Daemon, plan: Plan) -> dict[str, Any]:
    fast, slow = Client(memory.grpc_port), Client(sqlite.grpc_port)
    try:
        await fast.login("Tiers")
        await slow.login("Tiers")
        hot = encode_request(HOT)
        # The memory daemon already holds HOT (benchmark 1); the other stores it in SQLite.
        assert await slow.list(hot) in ("MISS", "HIT")
        for _ in range(100):  # warm-up
            await fast.list(hot)
            await slow.list(hot)
        misses = iter(distinct_queries(plan.sequential_misses * plan.rounds))
        seconds = plan.phase_seconds

        def memory_hit(n: int) -> Awaitable[str]:
            return fast.list(hot)

        def sqlite_hit(n: int) -> Awaitable[str]:
            return slow.list(hot)

        def miss(n: int) -> Awaitable[str]:
            return fast.list(next(misses))

        rounds = []
        for _ in range(plan.rounds):
            one = {
                "memory_hit": await run_calls(
                    memory_hit, plan.sequential_hits, 1, seconds=seconds, daemon=memory
                ),
                "sqlite_hit": await run_calls(
                    sqlite_hit, plan.sequential_hits, 1, seconds=seconds, daemon=sqlite
                ),
                "miss": await run_calls(
                    miss, plan.sequential_misses, 1, seconds=seconds, daemon=memory
                ),
            }
            figures: dict[str, Any] = {name: run.figures() for name, run in one.items()}
            figures["ratios"] = {
                "sqlite_over_memory_p50": figures["sqlite_hit"]["p50_ms"]
                / figures["memory_hit"]["p50_ms"],
                "miss_over_memory_p50": figures["miss"]["p50_ms"] / figures["memory_hit"]["p50_ms"],
                "sqlite_over_memory_cpu": figures["sqlite_hit"]["daemon_cpu_us_per_call"]
                / figures["memory_hit"]["daemon_cpu_us_per_call"],
            }
            rounds.append(figures)
        return {
            **{name: medians([r[name] for r in rounds]) for name in rounds[0]},
            "rounds": rounds,
        }
    finally:
        fast.close()
        slow.close()


# --- 3. concurrent misses: single-flight, and many distinct ones -------------------------------


@dataclass
class Target:
    """A daemon, its simulator, and a client with enough channels for the burst."""

    daemon: Daemon
    sim: Sim
    client: Client

    async def burst(self, queries: Sequence[bytes], seconds: float) -> dict[str, Any]:
        """One call per query, all at once; their figures and the upstream calls they caused."""

        def call(n: int) -> Awaitable[str]:
            return self.client.list(queries[n], n, SLOW_CALL_TIMEOUT)

        count = len(queries)
        before = self.sim.requests()
        run = await run_calls(call, count, count, seconds=seconds, daemon=self.daemon)
        return run.figures() | {"upstream_calls": self.sim.requests() - before}


async def bench_concurrent_misses(
    slow: tuple[Daemon, Sim], edge: tuple[Daemon, Sim], plan: Plan
) -> dict[str, Any]:
    """Identical misses against a simulator slow enough that every call arrives while the
    one upstream call is under way (``slow``); identical misses where that call ends in the
    middle of the burst, and distinct misses (``edge``)."""
    channels = math.ceil(max(plan.herd, plan.distinct) / STREAMS_PER_CHANNEL)
    targets = [Target(d, s, Client(d.grpc_port, channels=channels)) for d, s in (slow, edge)]
    try:
        for target in targets:
            await target.client.login("Burst")
            for n in range(channels):  # connect every channel before the clock starts
                await target.client.health(n)
        first, second = targets
        keys = distinct_queries(plan.rounds + plan.distinct * plan.rounds)
        herd_keys, distinct_keys = keys[: plan.rounds], keys[plan.rounds :]
        seconds = plan.phase_seconds
        rounds = []
        for r in range(plan.rounds):
            same = [herd_keys[r]] * plan.herd
            batch = distinct_keys[r * plan.distinct : (r + 1) * plan.distinct]
            rounds.append(
                {
                    "identical": await first.burst(same, seconds),
                    "identical_edge": await second.burst(same, seconds),
                    "distinct": await second.burst(batch, seconds),
                }
            )
        return {
            **{name: medians([r[name] for r in rounds]) for name in rounds[0]},
            "identical_sim_latency_ms": first.sim.latency_ms,
            "distinct_sim_latency_ms": second.sim.latency_ms,
            "upstream_calls_per_round": {
                name: [r[name]["upstream_calls"] for r in rounds] for name in rounds[0]
            },
            "rounds": rounds,
        }
    finally:
        for target in targets:
            target.client.close()


# --- 4. miss overhead ----------------------------------------------------------------------


async def bench_miss_overhead(daemon: Daemon, sim: Sim, plan: Plan) -> dict[str, Any]:
    """Pairs of (the simulator alone, a daemon miss) on the same distinct queries, taking
    turns so that noise hits both alike."""
    client = Client(daemon.grpc_port)
    http = httpx.AsyncClient(
        base_url=sim.api_url, timeout=TIMEOUT, headers={"Accept": "application/json"}
    )
    try:
        await client.login("Overhead")
        params = distinct_requests(plan.overhead_calls * plan.rounds + 10)
        queries = [encode_request(r) for r in params]

        async def direct(n: int) -> str:
            query = params[n]
            ts = str(time.time_ns())
            signed = {
                "orderBy": query.order_by,
                "limit": str(query.limit),
                "offset": str(query.offset),
                "ts": ts,
                "apikey": PUBLIC_KEY,
                "hash": hashlib.md5((ts + PRIVATE_KEY + PUBLIC_KEY).encode()).hexdigest(),
            }
            response = await http.get("/characters", params=signed)
            await response.aread()
            return str(response.status_code)

        for n in range(10):  # warm-up: connections, first misses
            await direct(n)
            await client.list(queries[n])
        rounds = []
        for r in range(plan.rounds):
            sim_run, miss_run = Run(), Run()
            cpu_before, sim_before = cpu_seconds(daemon.pid), cpu_seconds(sim.proc.pid)
            for n in range(10 + r * plan.overhead_calls, 10 + (r + 1) * plan.overhead_calls):
                for run, call in ((sim_run, direct), (miss_run, lambda n: client.list(queries[n]))):
                    started = time.perf_counter()
                    run.outcomes[await call(n)] += 1
                    run.latencies.append(time.perf_counter() - started)
                    run.wall += run.latencies[-1]
            miss_run.daemon_cpu = cpu_seconds(daemon.pid) - cpu_before
            sim_cpu = cpu_seconds(sim.proc.pid) - sim_before  # both runs called it once a pair
            simulator, miss = sim_run.figures(cpu=False), miss_run.figures()
            rounds.append(
                {
                    "simulator_alone": simulator,
                    "daemon_miss": miss,
                    "overhead": {
                        "p50_minus_nominal_ms": miss["p50_ms"] - sim.latency_ms,
                        "p50_minus_simulator_p50_ms": miss["p50_ms"] - simulator["p50_ms"],
                        "simulator_cpu_us_per_call": sim_cpu / (2 * plan.overhead_calls) * 1e6,
                    },
                }
            )
        return {
            **{name: medians([r[name] for r in rounds]) for name in rounds[0]},
            "sim_latency_ms": sim.latency_ms,
            "rounds": rounds,
        }
    finally:
        client.close()
        await http.aclose()


# --- 5. miss storm against the budget ----------------------------------------------------------


async def bench_storm(daemon: Daemon, sim: Sim, plan: Plan) -> dict[str, Any]:
    """Distinct queries, mostly past the catalogue's end (empty pages: cheap upstream)."""
    client = Client(daemon.grpc_port)
    try:
        await client.login("Storm")
        queries = [
            encode_request(pb.ListCharactersRequest(limit=PAGE, offset=n))
            for n in range(plan.storm)
        ]

        def call(n: int) -> Awaitable[str]:
            return client.list(queries[n], n)

        before = sim.requests()
        run = await run_calls(call, plan.storm, INFLIGHT, seconds=plan.phase_seconds, daemon=daemon)
        upstream = sim.requests() - before
        return {
            "storm": run.figures() | {"upstream_calls": upstream, "budget": plan.storm_budget},
            "rounds": 1,
        }
    finally:
        client.close()


# --- running them ----------------------------------------------------------------------------


@dataclass
class Report:
    plan: Plan
    figures: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)  # 1-minute load average before


@dataclass
class Phase:
    """One group of processes, the benchmark that uses them, and what it is called."""

    name: str
    run: Callable[[Processes, Plan], Coroutine[Any, Any, dict[str, Any]]]


async def _hits_and_tiers(procs: Processes, plan: Plan) -> dict[str, Any]:
    sim = procs.sim("sim-latency-0")
    memory = procs.daemon(sim, "daemon-memory-tier")
    sqlite = procs.daemon(sim, "daemon-sqlite-tier", MARVELD_CACHE_MEMORY_ENTRIES="0")
    procs.wait_ready()
    hits = await bench_hits(memory, plan)
    tiers = await bench_tiers(memory, sqlite, plan)
    return {"1_hits": hits, "2_tiers": tiers}


async def _concurrent(procs: Processes, plan: Plan) -> dict[str, Any]:
    slow_sim = procs.sim("sim-herd", latency_ms=plan.herd_latency_ms)
    edge_sim = procs.sim("sim-distinct", latency_ms=plan.distinct_latency_ms)
    slow = procs.daemon(slow_sim, "daemon-herd")
    edge = procs.daemon(edge_sim, "daemon-distinct")
    procs.wait_ready()
    figures = await bench_concurrent_misses((slow, slow_sim), (edge, edge_sim), plan)
    return {"3_concurrent_misses": figures}


async def _overhead(procs: Processes, plan: Plan) -> dict[str, Any]:
    sim = procs.sim("sim-overhead", latency_ms=plan.overhead_latency_ms)
    daemon = procs.daemon(sim, "daemon-overhead")
    procs.wait_ready()
    return {"4_miss_overhead": await bench_miss_overhead(daemon, sim, plan)}


async def _storm(procs: Processes, plan: Plan) -> dict[str, Any]:
    sim = procs.sim("sim-storm")
    daemon = procs.daemon(sim, "daemon-storm", MARVELD_UPSTREAM_DAILY_BUDGET=str(plan.storm_budget))
    procs.wait_ready()
    return {"5_storm": await bench_storm(daemon, sim, plan)}


PHASES = (
    Phase("hits and tiers", _hits_and_tiers),
    Phase("concurrent misses", _concurrent),
    Phase("miss overhead", _overhead),
    Phase("miss storm", _storm),
)


def run_phases(plan: Plan) -> Report:
    report = Report(plan)
    for phase in PHASES:
        print(f"... {phase.name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        report.load[phase.name] = os.getloadavg()[0]
        with processes() as procs:
            report.figures |= asyncio.run(phase.run(procs, plan))
            procs.stop()
            report.logs[phase.name] = procs.problems()
        report.seconds[phase.name] = time.perf_counter() - started
    return report


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    name: str
    measured: str
    target: str
    met: bool
    margin: str

    def row(self) -> dict[str, Any]:
        return {
            "goal": self.name,
            "measured": self.measured,
            "target": self.target,
            "met": self.met,
            "margin": self.margin,
        }


def _at_most(value: float, limit: float) -> str:
    if value <= limit:
        return f"{(1 - value / limit) * 100:.1f}% under the limit"
    return f"{(value / limit - 1) * 100:.1f}% over the limit"


def _at_least(value: float, floor: float) -> str:
    return f"{value / floor:.2f}x the goal"


def _spread(rounds: list[dict[str, Any]], group: str, key: str) -> str:
    values = [r[group][key] for r in rounds]
    return f"rounds {min(values):.2f}..{max(values):.2f}"


def goals(figures: dict[str, Any], plan: Plan) -> list[Goal]:
    hits, tiers = figures["1_hits"], figures["2_tiers"]
    herd = figures["3_concurrent_misses"]
    overhead, storm = figures["4_miss_overhead"], figures["5_storm"]["storm"]
    ratio = hits["cpu_ratio"]["hit_over_health"]
    per_cpu = hits["hit"]["calls_per_daemon_cpu_s"]
    tier_ratio = tiers["ratios"]["sqlite_over_memory_p50"]
    herd_calls = herd["upstream_calls_per_round"]
    sim_ms = overhead["sim_latency_ms"]
    miss_overhead = overhead["overhead"]["p50_minus_nominal_ms"]
    alone = overhead["overhead"]["p50_minus_simulator_p50_ms"]
    unclear = {
        k: v
        for k, v in storm["outcomes"].items()
        if k not in ("MISS", "HIT", "STALE", "UNAVAILABLE (budget)")
    }
    return [
        Goal(
            "1. daemon CPU per hit / per Health/Check (64 in flight)",
            f"{ratio:.3f}x ({hits['hit']['daemon_cpu_us_per_call']:.0f} vs "
            f"{hits['health']['daemon_cpu_us_per_call']:.0f} us;"
            f" {_spread(hits['rounds'], 'cpu_ratio', 'hit_over_health')})",
            "<= 1.2x",
            ratio <= 1.2,
            _at_most(ratio, 1.2),
        ),
        Goal(
            "1. hits per daemon-CPU-second (one core)",
            f"{per_cpu:,.0f}/s",
            ">= 4,000/s",
            per_cpu >= 4000,
            _at_least(per_cpu, 4000),
        ),
        Goal(
            "2. SQLite-tier hit p50 / memory-tier hit p50",
            f"{tier_ratio:.2f}x ({tiers['sqlite_hit']['p50_ms']:.3f} vs "
            f"{tiers['memory_hit']['p50_ms']:.3f} ms;"
            f" {_spread(tiers['rounds'], 'ratios', 'sqlite_over_memory_p50')})",
            ">= 3x",
            tier_ratio >= 3,
            _at_least(tier_ratio, 3),
        ),
        *(
            Goal(
                f"3. {plan.herd} identical misses at once, {what}: upstream calls",
                ", ".join(str(c) for c in calls) + " (per round)",
                "exactly 1",
                all(c == 1 for c in calls),
                "every round" if all(c == 1 for c in calls) else "not in every round",
            )
            for what, calls in (
                (f"sim {herd['identical_sim_latency_ms']:g} ms", herd_calls["identical"]),
                (
                    f"sim {herd['distinct_sim_latency_ms']:g} ms (ends mid-burst)",
                    herd_calls["identical_edge"],
                ),
            )
        ),
        Goal(
            f"4. miss p50 minus the simulator's nominal {sim_ms:g} ms",
            f"{miss_overhead:.2f} ms",
            "<= 2 ms",
            miss_overhead <= 2.0,
            _at_most(miss_overhead, 2.0),
        ),
        Goal(
            "4. miss p50 minus the simulator's own p50 (the daemon's alone)",
            f"{alone:.2f} ms",
            "<= 2 ms",
            alone <= 2.0,
            _at_most(alone, 2.0),
        ),
        Goal(
            "5. storm: upstream calls <= daily budget",
            f"{storm['upstream_calls']} of {storm['budget']}",
            "<= budget",
            storm["upstream_calls"] <= storm["budget"],
            f"{storm['budget'] - storm['upstream_calls']} calls to spare",
        ),
        Goal(
            "5. storm: every call served or refused with a clear status",
            "other outcomes: " + (", ".join(f"{k} {v}" for k, v in unclear.items()) or "none"),
            "none",
            not unclear,
            "" if not unclear else f"{sum(unclear.values())} calls",
        ),
    ]


def _outcomes(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def table_rows(figures: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    hits, tiers = figures["1_hits"], figures["2_tiers"]
    concurrent, overhead = figures["3_concurrent_misses"], figures["4_miss_overhead"]
    return [
        ("1  Health/Check, 64 in flight, 1 client process", hits["health"]),
        ("1  hit, 64 in flight, 1 client process", hits["hit"]),
        ("1  hit, 64 in flight, client decodes (betterproto2)", hits["hit_decoding_client"]),
        ("1  Health/Check, 2 client processes x 32", hits["health_2_clients"]),
        ("1  hit, 2 client processes x 32", hits["hit_2_clients"]),
        ("2  memory-tier hit, 1 at a time", tiers["memory_hit"]),
        ("2  SQLite-tier hit, 1 at a time", tiers["sqlite_hit"]),
        ("2  miss (sim 0 ms), 1 at a time", tiers["miss"]),
        (
            f"3  identical misses, all at once (sim {concurrent['identical_sim_latency_ms']:g} ms)",
            concurrent["identical"],
        ),
        (
            f"3  identical misses, all at once (sim {concurrent['distinct_sim_latency_ms']:g} ms)",
            concurrent["identical_edge"],
        ),
        (
            f"3  distinct misses, all at once (sim {concurrent['distinct_sim_latency_ms']:g} ms)",
            concurrent["distinct"],
        ),
        (
            f"4  simulator alone (sim {overhead['sim_latency_ms']:g} ms)",
            overhead["simulator_alone"],
        ),
        (
            f"4  miss through the daemon (sim {overhead['sim_latency_ms']:g} ms)",
            overhead["daemon_miss"],
        ),
        ("5  storm, 64 in flight", figures["5_storm"]["storm"]),
    ]


def _number(row: dict[str, Any], key: str, form: str) -> str:
    value = row.get(key)
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else form.format(value)
    )


def render(report: Report, goal_list: list[Goal], notes: list[str]) -> str:
    plan, figures = report.plan, report.figures
    head = (
        f"{'benchmark':58} {'calls':>6} {'wall s':>7} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'dCPU us':>8} {'/dCPU-s':>8} {'d busy':>6} {'c busy':>6} {'upstrm':>6}  outcomes"
    )
    lines = [
        f"marveld cache benchmarks (issue 3): {os.cpu_count()} cores, median of {plan.rounds}"
        f" rounds, loopback; 1-minute load average {min(report.load.values()):.2f} to"
        f" {max(report.load.values()):.2f} at the start of each phase",
        "dCPU us = daemon CPU (utime+stime) per call; /dCPU-s = calls per daemon-CPU-second;"
        " d/c busy = daemon/client CPU over wall time",
        head,
        "-" * len(head),
    ]
    for label, row in table_rows(figures):
        lines.append(
            f"{label:58} {_number(row, 'calls', '{:.0f}'):>6} {_number(row, 'wall_s', '{:.2f}'):>7}"
            f" {_number(row, 'calls_per_s', '{:,.0f}'):>8} {_number(row, 'p50_ms', '{:.3f}'):>8}"
            f" {_number(row, 'p99_ms', '{:.3f}'):>8}"
            f" {_number(row, 'daemon_cpu_us_per_call', '{:.0f}'):>8}"
            f" {_number(row, 'calls_per_daemon_cpu_s', '{:,.0f}'):>8}"
            f" {_number(row, 'daemon_busy', '{:.0%}'):>6}"
            f" {_number(row, 'client_busy', '{:.0%}'):>6}"
            f" {_number(row, 'upstream_calls', '{:.0f}'):>6}  {_outcomes(row['outcomes'])}"
        )
    name_width = max(len(g.name) for g in goal_list)
    measured_width = max(len(g.measured) for g in goal_list)
    lines += ["", f"{'goal':{name_width}}  {'measured':{measured_width}}  {'target':>10}  verdict"]
    for g in goal_list:
        verdict = ("MET" if g.met else "NOT MET") + (f" ({g.margin})" if g.margin else "")
        lines.append(
            f"{g.name:{name_width}}  {g.measured:{measured_width}}  {g.target:>10}  {verdict}"
        )
    if notes:
        lines += ["", "notes:"] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def bottleneck(row: dict[str, Any], client_processes: int) -> str:
    """What limited a batch's calls/s, from the CPU the daemon and the clients used."""
    daemon, client = row["daemon_busy"], row["client_busy"]
    busy = f"daemon {daemon:.0%} and client(s) {client:.0%} of one core"
    if daemon >= 0.9:
        return f"the daemon is saturated ({busy})"
    if client >= 0.9 * client_processes:
        return (
            f"the client is the bottleneck ({busy}): calls/s is the client's ceiling,"
            " calls per daemon-CPU-second the daemon's"
        )
    if daemon + client >= 1.8:
        return f"both cores are busy ({busy}): calls/s is what 2 shared cores give"
    return (
        f"neither is saturated ({busy}): the cores are shared with other work on the"
        " machine, so calls/s is low; calls per daemon-CPU-second is still the daemon's"
    )


def observations(report: Report) -> list[str]:
    """What the figures and logs say beyond the goals: bottlenecks, failures, log lines."""
    figures, notes = report.figures, []
    hits = figures["1_hits"]
    for name, processes_ in (("hit", 1), ("hit_2_clients", 2)):
        notes.append(f"1: {name}: {bottleneck(hits[name], processes_)}")
    decoding = hits["hit_decoding_client"]
    notes.append(
        f"1: a client that decodes each page with betterproto2 manages"
        f" {decoding['calls_per_s']:,.0f} calls/s (client busy {decoding['client_busy']:.0%});"
        " the other hit rows read only the cache_status field of the raw bytes"
        f" (page: {hits['page_bytes']:,} bytes)"
    )
    notes.append(
        "1: daemon CPU per hit / per health check with two client processes:"
        f" {hits['cpu_ratio_2_clients']['hit_over_health']:.2f}x"
        f" (one process: {hits['cpu_ratio']['hit_over_health']:.2f}x)"
    )
    concurrent = figures["3_concurrent_misses"]
    for name in ("identical", "identical_edge"):
        notes.append(
            f"3: {name} misses ended as {_outcomes(concurrent[name]['outcomes'])} (all rounds):"
            " MISS = waited for the upstream call, HIT = arrived after it had finished"
        )
    notes.append(
        "3: upstream calls per round: "
        + "; ".join(f"{k} {v}" for k, v in concurrent["upstream_calls_per_round"].items())
    )
    overhead = figures["4_miss_overhead"]
    notes.append(
        f"4: daemon CPU per miss {overhead['daemon_miss']['daemon_cpu_us_per_call']:.0f} us;"
        f" simulator CPU per call {overhead['overhead']['simulator_cpu_us_per_call']:.0f} us"
    )
    for phase, logs in report.logs.items():
        for process, lines in logs.items():
            sample = " | ".join(line[:160] for line in lines[:3])
            notes.append(f"log of {process} ({phase}): {len(lines)} lines, e.g. {sample}")
    slow = {name: round(s, 1) for name, s in report.seconds.items()}
    notes.append(f"seconds per phase (process start-up included): {slow}")
    load = {name: round(value, 2) for name, value in report.load.items()}
    notes.append(f"1-minute load average before each phase: {load}")
    return notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, to check wiring")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    report = run_phases(plan)
    goal_list = goals(report.figures, plan)
    notes = observations(report)
    print(render(report, goal_list, notes))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "cache.json"
    document = {
        "measured_at": time.time(),
        "quick": args.quick,
        "plan": dataclasses.asdict(plan),
        "machine": {"cpus": os.cpu_count(), "loadavg_after": os.getloadavg()},
        "seconds": time.perf_counter() - started,
        "goals": [g.row() for g in goal_list],
        "notes": notes,
        "figures": report.figures,
        "logs": report.logs,
        "load_before_phase": report.load,
    }
    out.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"written to {out} ({time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
