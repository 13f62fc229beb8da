"""Concurrency: reads at full rate while syncs, webhooks and purges run.

Starts ``marveld sim`` (the recorded 1,561 characters when present, else the generated
catalogue) with an upstream latency L of ``--latency-ms`` per character API call and
signed webhooks to the daemon, and ``marveld serve`` (rate limits and poller off). After
the first full sync (TriggerSync, before any measuring), for ``--seconds``:

- readers, in ``--readers`` client processes, each kind in a closed loop (a call starts
  when the previous one ends): ListCharacters on a few hot queries (hits; after a purge or
  an invalidation one MISS each, then hits again), ListCharacters on distinct queries
  (misses: each reaches the upstream), GetCharacter on known ids and SearchCharacters on
  name words (both answered from the local read model once synced), and GetCharacter on
  ids nobody has (NOT_FOUND, read through the upstream then remembered for a short while);
- writers, from this process: a sync loop (upstream changes without webhooks, so that
  each poll spans several upstream pages of L each, then TriggerSync, then an idle pause
  so that reads with no sync running are measured too); upstream changes with webhooks at
  a steady rate (one in ten an addition), each fetched and applied by the daemon;
  PurgeCache every few seconds (everything, or every answer holding one character).

What must hold (each failure is a problem and the exit status is 1):

- every call ends OK, except GetCharacter on unknown ids, which ends NOT_FOUND: SQLite's
  single writer and WAL readers must never turn a busy or locked database into an error;
- no status message and no daemon log line mentions a locked or busy database;
- no request waits on the poller: a read answered locally (a cache HIT or STALE,
  GetCharacter, SearchCharacters) started while a sync is under way must complete in less
  than L, the time the sync's next upstream page takes to come back. Local reads slower
  than L are counted, during syncs and with none running, and grouped into episodes
  (overlapping slow reads: one stall of a noisy shared machine slows every read in flight
  at once). A few episodes are noise; more than ``STRUCTURAL_EPISODES`` during syncs
  is a read waiting on the sync;
- every webhook sent is applied, and at the end, once the writers have stopped and a last
  sync has run, the database passes ``invariants.check_all`` (integrity, event log, read
  model = fold of the events, every upstream character stored once with its content).

Figures: calls by kind and status, p50/p99/max latency per kind, local reads during syncs
vs idle (with the count slower than L), and the syncs, webhooks and purges done.

    .venv/bin/python -m reliability.concurrency [--seconds 60] [--short]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from grpclib.client import Channel, UnaryUnaryMethod
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from bench.cache import RawCodec, cache_status, failure
from bench.harness import MARVELD, SECRETS, Daemon, Processes, Sim, free_port, login, processes
from marveld.proto.marvel import v1 as pb
from reliability.common import RESULTS, Report
from reliability.invariants import check_all, upstream_catalogue

RECORDED = Path(__file__).parents[2] / "shared" / "data" / "marvel" / "characters.json"
WEBHOOK_SECRET = "reliability-webhook-secret"
LIST = "/marvel.v1.CharacterService/ListCharacters"
GET = "/marvel.v1.CharacterService/GetCharacter"
SEARCH = "/marvel.v1.CharacterService/SearchCharacters"
PAGE = 20
ORDERS = ("name", "-name", "modified", "-modified")
HOT = [pb.ListCharactersRequest(limit=PAGE, order_by=o) for o in ORDERS]
UNKNOWN_IDS = list(range(1, 51))  # no character has these ids
LOCAL_TIMEOUT = 10.0
UPSTREAM_TIMEOUT = 30.0
SYNC_TIMEOUT = 180.0
READY_SECONDS = 60.0
SETTLE_SECONDS = 60.0
STRUCTURAL_EPISODES = 5
# Closed-loop workers per reader process, by kind.
WORKERS = {"hot": 8, "get": 4, "search": 4, "miss": 4, "get_unknown": 1}
# Warnings the settings of this run cause on purpose.
EXPECTED_LOG = ("rate limits and the login throttle are off",)
BAD_WORDS = re.compile(r"locked|busy", re.IGNORECASE)


@dataclass(frozen=True)
class Plan:
    seconds: float
    latency_ms: float
    readers: int
    bulk_changes: int  # upstream changes without webhooks before each sync
    idle_seconds: float  # pause between two syncs
    webhooks_per_second: float
    purge_every: float

    @property
    def latency(self) -> float:
        return self.latency_ms / 1000


class Call(NamedTuple):
    kind: str
    status: str
    start: float  # time.monotonic(): one clock for every process on the machine
    seconds: float


# --- readers, in client processes -----------------------------------------------------------


@dataclass
class ReaderJob:
    port: int
    metadata: dict[str, str]
    ids: list[int]
    words: list[str]
    misses: list[bytes]
    seed: int


def reader_process(conn: Connection, job: ReaderJob) -> None:
    try:
        asyncio.run(_reader(conn, job))
    finally:
        conn.close()


async def _reader(conn: Connection, job: ReaderJob) -> None:
    channel = Channel("127.0.0.1", job.port, codec=RawCodec())
    methods = {
        path: UnaryUnaryMethod[bytes, bytes](channel, path, bytes, bytes)
        for path in (LIST, GET, SEARCH)
    }
    rng = random.Random(job.seed)
    calls: list[Call] = []
    messages: Counter[str] = Counter()
    hot = [bytes(r) for r in HOT]
    misses = iter(job.misses)

    async def one(kind: str, path: str, request: bytes, seconds: float) -> None:
        started = time.monotonic()
        try:
            reply = await methods[path](request, metadata=job.metadata, timeout=seconds)
        except (GRPCError, StreamTerminatedError, ConnectionError, TimeoutError) as exc:
            status = failure(exc)
            if isinstance(exc, GRPCError):
                messages[f"{kind} {status}: {exc.message}"] += 1
        else:
            status = cache_status(reply) if path != GET else "OK"
        calls.append(Call(kind, status, started, time.monotonic() - started))

    def next_call(kind: str) -> tuple[str, bytes, float] | None:
        if kind == "hot":
            return LIST, rng.choice(hot), UPSTREAM_TIMEOUT  # a MISS after a purge
        if kind == "get":
            return GET, bytes(pb.GetCharacterRequest(id=rng.choice(job.ids))), LOCAL_TIMEOUT
        if kind == "search":
            request = pb.SearchCharactersRequest(query=rng.choice(job.words), limit=PAGE)
            return SEARCH, bytes(request), LOCAL_TIMEOUT
        if kind == "get_unknown":
            request = pb.GetCharacterRequest(id=rng.choice(UNKNOWN_IDS))
            return GET, bytes(request), UPSTREAM_TIMEOUT
        query = next(misses, None)
        return None if query is None else (LIST, query, UPSTREAM_TIMEOUT)

    async def worker(kind: str, until: float) -> None:
        while time.monotonic() < until:
            chosen = next_call(kind)
            if chosen is None:
                return
            await one(kind, *chosen)

    try:
        # Warm-up: connect, and one call of each local kind.
        for kind in ("hot", "get", "search"):
            chosen = next_call(kind)
            assert chosen is not None
            await one(kind, *chosen)
        calls.clear()
        messages.clear()
        conn.send("ready")
        if not await asyncio.to_thread(conn.poll, READY_SECONDS):
            return
        until = float(conn.recv())
        await asyncio.gather(
            *(worker(kind, until) for kind, count in WORKERS.items() for _ in range(count))
        )
        conn.send({"calls": [tuple(c) for c in calls], "messages": dict(messages)})
    finally:
        channel.close()


class Readers:
    """``count`` reader processes; ``run`` starts them all at once and collects."""

    def __init__(self, jobs: Sequence[ReaderJob]) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for job in jobs:
            parent, child = context.Pipe()
            proc = context.Process(target=reader_process, args=(child, job), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    async def ready(self) -> None:
        for pipe in self.pipes:
            if await _receive(pipe, READY_SECONDS) != "ready":
                raise RuntimeError("a reader process did not get ready")

    def go(self, until: float) -> None:
        for pipe in self.pipes:
            pipe.send(until)

    async def results(self, seconds: float) -> tuple[list[Call], Counter[str]]:
        calls: list[Call] = []
        messages: Counter[str] = Counter()
        for pipe in self.pipes:
            result = await _receive(pipe, seconds)
            calls += [Call(*c) for c in result["calls"]]
            messages.update(result["messages"])
        return calls, messages

    def close(self) -> None:
        for pipe, proc in zip(self.pipes, self.procs, strict=True):
            proc.join(10)
            if proc.exitcode is None:
                proc.terminate()
                proc.join(10)
            pipe.close()


async def _receive(pipe: Connection, seconds: float) -> Any:
    if not await asyncio.to_thread(pipe.poll, seconds):
        raise RuntimeError(f"a reader process did not answer within {seconds:g}s")
    return pipe.recv()


# --- writers, in this process ---------------------------------------------------------------


@dataclass
class Writers:
    """What the writers did: sync windows (monotonic start, end), counts, failures."""

    syncs: list[tuple[float, float]] = field(default_factory=list)
    sync_pages: list[int] = field(default_factory=list)
    webhook_changes: int = 0
    bulk_changes: int = 0
    purges: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)  # "TriggerSync OK", ...
    messages: Counter[str] = field(default_factory=Counter)

    def failed(self, what: str, exc: BaseException) -> None:
        status = failure(exc)
        self.calls[f"{what} {status}"] += 1
        message = exc.message if isinstance(exc, GRPCError) else str(exc)
        self.messages[f"{what} {status}: {message}"] += 1


async def admin_call(writers: Writers, what: str, call: Awaitable[Any]) -> Any | None:
    try:
        reply = await call
    except (GRPCError, StreamTerminatedError, ConnectionError, TimeoutError) as exc:
        writers.failed(what, exc)
        return None
    writers.calls[f"{what} OK"] += 1
    return reply


async def change_upstream(
    http: httpx.AsyncClient, ids: Sequence[int], rng: random.Random, *, webhook: bool
) -> None:
    params = {} if webhook else {"webhook": "false"}
    if webhook and rng.random() < 0.1:
        response = await http.post("/_sim/characters", json={"name": f"Concurrent {rng.random()}"})
    else:
        target = rng.choice(ids)
        text = f"Changed under load {rng.random():.6f}."
        response = await http.post(
            f"/_sim/characters/{target}", json={"description": text}, params=params
        )
    response.raise_for_status()


async def sync_loop(
    admin: pb.AdminServiceStub,
    metadata: dict[str, str],
    http: httpx.AsyncClient,
    ids: Sequence[int],
    plan: Plan,
    until: float,
    writers: Writers,
) -> None:
    rng = random.Random(1)
    while time.monotonic() < until:
        for start in range(0, plan.bulk_changes, 16):
            batch = range(start, min(start + 16, plan.bulk_changes))
            await asyncio.gather(*(change_upstream(http, ids, rng, webhook=False) for _ in batch))
        writers.bulk_changes += plan.bulk_changes
        started = time.monotonic()
        reply = await admin_call(
            writers,
            "TriggerSync",
            admin.trigger_sync(pb.TriggerSyncRequest(), metadata=metadata, timeout=SYNC_TIMEOUT),
        )
        writers.syncs.append((started, time.monotonic()))
        if reply is not None:
            writers.sync_pages.append(reply.pages_fetched)
        await asyncio.sleep(min(plan.idle_seconds, max(0.0, until - time.monotonic())))


async def webhook_loop(
    http: httpx.AsyncClient, ids: Sequence[int], plan: Plan, until: float, writers: Writers
) -> None:
    rng = random.Random(2)
    period = 1.0 / plan.webhooks_per_second
    due = time.monotonic()
    while due < until:
        await change_upstream(http, ids, rng, webhook=True)
        writers.webhook_changes += 1
        due += period
        await asyncio.sleep(max(0.0, due - time.monotonic()))


async def purge_loop(
    admin: pb.AdminServiceStub,
    metadata: dict[str, str],
    ids: Sequence[int],
    plan: Plan,
    until: float,
    writers: Writers,
) -> None:
    rng = random.Random(3)
    number = 0
    while True:
        await asyncio.sleep(plan.purge_every)
        if time.monotonic() >= until:
            return
        number += 1
        if number % 2:
            request, kind = pb.PurgeCacheRequest(all=True), "all"
        else:
            request, kind = pb.PurgeCacheRequest(character_id=rng.choice(ids)), "character"
        reply = await admin_call(
            writers,
            "PurgeCache",
            admin.purge_cache(request, metadata=metadata, timeout=LOCAL_TIMEOUT),
        )
        if reply is not None:
            writers.purges[kind] += 1


# --- setting up -----------------------------------------------------------------------------


def start(procs: Processes, plan: Plan, dataset: Path | None) -> tuple[Sim, Daemon]:
    http_port = free_port()
    args = ["--webhook-url", f"http://127.0.0.1:{http_port}/v1/webhooks/marvel"]
    if dataset is not None:
        args += ["--dataset", str(dataset)]
    sim = procs.sim(
        latency_ms=plan.latency_ms, args=args, env={"MARVELD_WEBHOOK_SECRET": WEBHOOK_SECRET}
    )
    daemon = procs.daemon(sim, http_port=http_port, MARVELD_WEBHOOK_SECRET=WEBHOOK_SECRET)
    procs.wait_ready()
    return sim, daemon


def grant_admin(procs: Processes, email: str) -> None:
    env = {
        **os.environ,
        **SECRETS,
        "MARVELD_DATABASE_PATH": str(procs.tmp / "daemon.db"),
        "MARVELD_LOG_LEVEL": "warning",
    }
    config = str(procs.tmp / "marveld.toml")
    subprocess.run(
        [*MARVELD, "users", "grant-admin", "--config", config, email],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
    )


def catalogue(db: Path) -> tuple[list[int], list[str]]:
    """The synced characters' ids, and the distinct words of their names (for searches)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        rows = conn.execute("SELECT marvel_id, json_extract(data, '$.name') FROM character_reads")
        found = [(int(i), str(n or "")) for i, n in rows]
    words = sorted({w for _, name in found for w in re.findall(r"[A-Za-z]{3,}", name)})
    return [i for i, _ in found], words


def distinct_misses(count: int, catalogue_size: int) -> list[bytes]:
    """``count`` ListCharacters queries unlike each other and unlike ``HOT``."""
    offsets = max(1, catalogue_size - PAGE)
    return [
        bytes(
            pb.ListCharactersRequest(
                limit=PAGE, offset=1 + n % offsets, order_by=ORDERS[(n // offsets) % len(ORDERS)]
            )
        )
        for n in range(min(count, offsets * len(ORDERS)))
    ]


def metric(daemon: Daemon, name: str, labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}}"):
            return float(line.split()[-1])
    return 0.0


def webhooks_applied(daemon: Daemon) -> int:
    return int(metric(daemon, "marveld_webhook_deliveries_total", 'outcome="applied"'))


# --- the run --------------------------------------------------------------------------------


async def run(procs: Processes, plan: Plan, dataset: Path | None, report: Report) -> None:
    sim, daemon = start(procs, plan, dataset)
    db = procs.tmp / "daemon.db"
    channel = Channel("127.0.0.1", daemon.grpc_port)
    readers: Readers | None = None
    try:
        admin_md = await login(channel, "Admin")
        grant_admin(procs, "admin@example.com")
        admin = pb.AdminServiceStub(channel)
        started = time.monotonic()
        boot = await admin.trigger_sync(
            pb.TriggerSyncRequest(), metadata=admin_md, timeout=SYNC_TIMEOUT
        )
        report.figure(
            "first full sync (before measuring)",
            f"{boot.pages_fetched} pages, {boot.added:,} added, {time.monotonic() - started:.1f} s",
        )
        ids, words = catalogue(db)
        reader_md = await login(channel, "Reader")
        per_reader = 1500 if plan.seconds <= 30 else 4000
        misses = distinct_misses(per_reader * plan.readers, len(ids))
        jobs = [
            ReaderJob(daemon.grpc_port, reader_md, ids, words, misses[n :: plan.readers], n)
            for n in range(plan.readers)
        ]
        readers = Readers(jobs)
        await readers.ready()

        writers = Writers()
        until = time.monotonic() + plan.seconds
        readers.go(until)
        async with httpx.AsyncClient(base_url=sim.base_url, timeout=30) as http:
            await asyncio.gather(
                sync_loop(admin, admin_md, http, ids, plan, until, writers),
                webhook_loop(http, ids, plan, until, writers),
                purge_loop(admin, admin_md, ids, plan, until, writers),
            )
        calls, messages = await readers.results(SYNC_TIMEOUT)

        # Settle: every webhook applied, then one last sync, then the invariants.
        settle = (
            SETTLE_SECONDS + (writers.webhook_changes - webhooks_applied(daemon)) * plan.latency
        )
        deadline = time.monotonic() + settle
        while webhooks_applied(daemon) < writers.webhook_changes:
            if time.monotonic() > deadline:
                report.problem(
                    f"{writers.webhook_changes - webhooks_applied(daemon)} of"
                    f" {writers.webhook_changes} webhooks not applied {settle:.0f}s"
                    " after the writers stopped"
                )
                break
            await asyncio.sleep(0.2)
        applied = webhooks_applied(daemon)
        await admin_call(
            writers,
            "TriggerSync",
            admin.trigger_sync(pb.TriggerSyncRequest(), metadata=admin_md, timeout=SYNC_TIMEOUT),
        )
    finally:
        channel.close()
        if readers is not None:
            readers.close()
    upstream = upstream_catalogue(
        sim.api_url, SECRETS["MARVEL_PUBLIC_KEY"], SECRETS["MARVEL_PRIVATE_KEY"]
    )
    invariants = check_all(db, upstream)
    procs.stop()
    if invariants:  # keep the evidence: the temp dir goes
        kept = RESULTS / "concurrency-failed.db"
        kept.parent.mkdir(exist_ok=True)
        with closing(sqlite3.connect(db)) as source, closing(sqlite3.connect(kept)) as copy:
            source.backup(copy)
        report.figure("database kept", str(kept))
        differing = [int(m) for t in invariants for m in re.findall(r"character (\d+)", t)]
        for marvel_id in differing[:3]:
            if marvel_id in upstream:
                report.figure(f"upstream {marvel_id}", upstream[marvel_id].to_json())
    figures(report, plan, calls, writers, applied)
    check(report, plan, calls, messages, writers)
    for text in invariants:
        report.problem(f"invariant: {text}")
    daemon_log(report, procs)


# --- figures and checks ---------------------------------------------------------------------

LOCAL = {("hot", "HIT"), ("hot", "STALE"), ("get", "OK"), ("search", "HIT")}


def label(call: Call) -> str:
    """The latency row a call counts in."""
    if call.kind == "hot":
        return "list hit" if (call.kind, call.status) in LOCAL else "list hot miss"
    return {"miss": "list miss", "get": "get", "search": "search", "get_unknown": "get unknown"}[
        call.kind
    ]


def during(windows: Sequence[tuple[float, float]], at: float) -> bool:
    return any(a <= at < b for a, b in windows)


def latencies(samples: Sequence[float]) -> str:
    if not samples:
        return "-"
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    worst = ordered[-1] * 1000
    return f"{len(ordered):,} calls, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms"


def episodes(slow: Sequence[Call]) -> int:
    """Groups of overlapping slow calls (one stall slows every call in flight)."""
    count, end = 0, -1.0
    for call in sorted(slow, key=lambda c: c.start):
        if call.start > end:
            count += 1
        end = max(end, call.start + call.seconds)
    return count


def figures(
    report: Report, plan: Plan, calls: Sequence[Call], writers: Writers, applied: int
) -> None:
    by_status = Counter(f"{c.kind} {c.status}" for c in calls)
    span = plan.seconds
    report.figure("reads", f"{len(calls):,} ({len(calls) / span:,.0f}/s)")
    for key in sorted(by_status):
        report.figure(f"  calls {key}", by_status[key])
    for key in sorted(writers.calls):
        report.figure(f"  calls {key}", writers.calls[key])
    rows: dict[str, list[float]] = {}
    for call in calls:
        if call.status in ("OK", "HIT", "MISS", "STALE", "NOT_FOUND"):
            rows.setdefault(label(call), []).append(call.seconds)
    for name in ("list hit", "get", "search", "list hot miss", "list miss", "get unknown"):
        report.figure(f"latency {name}", latencies(rows.get(name, [])))
    sync_seconds = sum(b - a for a, b in writers.syncs)
    local = [c for c in calls if (c.kind, c.status) in LOCAL]
    in_sync = [c for c in local if during(writers.syncs, c.start)]
    idle = [c for c in local if not during(writers.syncs, c.start)]
    report.figure("local reads during syncs", latencies([c.seconds for c in in_sync]))
    report.figure("local reads, no sync running", latencies([c.seconds for c in idle]))
    for name, group in (("during syncs", in_sync), ("no sync running", idle)):
        slow = [c for c in group if c.seconds > plan.latency]
        report.figure(
            f"local reads > L={plan.latency_ms:g} ms {name}",
            f"{len(slow)} in {episodes(slow)} episode(s)",
        )
    misses = [c for c in calls if c.kind == "miss" and c.status == "MISS"]
    report.figure(
        "misses during syncs",
        latencies([c.seconds for c in misses if during(writers.syncs, c.start)]),
    )
    report.figure(
        "misses, no sync running",
        latencies([c.seconds for c in misses if not during(writers.syncs, c.start)]),
    )
    durations = sorted(b - a for a, b in writers.syncs)
    report.figure(
        "syncs (polls)",
        f"{len(writers.syncs)}, {sum(writers.sync_pages)} pages, median"
        f" {durations[len(durations) // 2] if durations else 0:.1f} s, max"
        f" {durations[-1] if durations else 0:.1f} s, {sync_seconds / span:.0%} of the time",
    )
    report.figure("upstream changes for the polls", writers.bulk_changes)
    report.figure("webhook changes sent / applied", f"{writers.webhook_changes} / {applied}")
    report.figure("purges", ", ".join(f"{k} {v}" for k, v in sorted(writers.purges.items())) or 0)


def check(
    report: Report,
    plan: Plan,
    calls: Sequence[Call],
    messages: Counter[str],
    writers: Writers,
) -> None:
    expected = {
        "hot": {"HIT", "MISS", "STALE"},
        "miss": {"MISS"},
        "get": {"OK"},
        "search": {"HIT"},
        "get_unknown": {Status.NOT_FOUND.name},
    }
    unexpected = Counter(f"{c.kind} {c.status}" for c in calls if c.status not in expected[c.kind])
    for key, count in sorted(unexpected.items()):
        report.problem(f"{count} {key} call(s)")
    for key, count in sorted(writers.calls.items()):
        if not key.endswith(" OK"):
            report.problem(f"{count} {key} call(s)")
    for text, count in (messages + writers.messages).items():
        if BAD_WORDS.search(text):
            report.problem(f"a status message mentions a locked/busy database ({count}x): {text}")
    shown = [(t, n) for t, n in (messages + writers.messages).items() if "NOT_FOUND" not in t]
    for text, count in shown[:10]:
        report.figure(f"message ({count}x)", text)
    local = [c for c in calls if (c.kind, c.status) in LOCAL]
    slow = [c for c in local if c.seconds > plan.latency and during(writers.syncs, c.start)]
    if episodes(slow) > STRUCTURAL_EPISODES:
        report.problem(
            f"{len(slow)} local read(s) during syncs took longer than L ="
            f" {plan.latency_ms:g} ms, in {episodes(slow)} episodes: reads wait on the sync"
        )
    for kind in ("hot", "get", "search", "miss"):
        if not any(c.kind == kind for c in calls):
            report.problem(f"no {kind} reads were made")
    if not writers.syncs:
        report.problem("no sync ran")


def daemon_log(report: Report, procs: Processes) -> None:
    for path in procs.logs:
        if path.stem != "daemon":
            continue
        for line in path.read_text(errors="replace").splitlines():
            if BAD_WORDS.search(line):
                report.problem(f"daemon log mentions a locked/busy database: {line[:300]}")
    for name, lines in procs.problems().items():
        lines = [line for line in lines if not any(ok in line for ok in EXPECTED_LOG)]
        report.figure(f"{name} log lines above info", len(lines))
        for line in lines[:5]:
            report.problem(f"{name} log: {line[:300]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--short", action="store_true", help="a 20 s run, for CI")
    parser.add_argument("--latency-ms", type=float, default=400.0)
    parser.add_argument("--readers", type=int, default=1, help="client processes")
    parser.add_argument("--bulk-changes", type=int, default=600)
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    # The daemon fetches up to 32 pending deliveries at once (8 calls in flight), so at
    # L = 400 ms it keeps up with ~20 a second; one at a time it managed ~2.2.
    parser.add_argument("--webhooks-per-second", type=float, default=5.0)
    parser.add_argument("--purge-every", type=float, default=3.0)
    parser.add_argument("--dataset", type=Path, default=RECORDED if RECORDED.is_file() else None)
    args = parser.parse_args(argv)
    plan = Plan(
        seconds=20.0 if args.short else args.seconds,
        latency_ms=args.latency_ms,
        readers=args.readers,
        bulk_changes=args.bulk_changes,
        idle_seconds=args.idle_seconds,
        webhooks_per_second=args.webhooks_per_second,
        purge_every=args.purge_every,
    )
    settings = {
        **{k: v for k, v in vars(plan).items()},
        "dataset": str(args.dataset) if args.dataset else "generated",
    }
    report = Report("concurrency", settings)
    with processes() as procs:
        asyncio.run(run(procs, plan, args.dataset, report))
    return report.finish()


if __name__ == "__main__":
    raise SystemExit(main())
