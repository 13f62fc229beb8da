"""Soak and graceful shutdown: minutes of mixed load on loopback, then a SIGTERM under load.

Starts ``marveld sim`` (webhooks to the daemon) and ``marveld serve`` (poller on, rate
limits ON with the defaults but a larger anonymous allowance, so that registering the
users does not take minutes) as subprocesses (bench/harness.py), waits for the first full
sync, registers the users, then runs the load from client subprocesses, never the daemon's:

- a load process (grpclib): a few users each making ~4 calls a second, a mix of cache hits
  (popular ListCharacters/SearchCharacters/GetCharacter), misses (ListCharacters with an
  offset never asked before), GetCharacter of any known id and of unknown ids (NOT_FOUND);
  one greedy user sending bursts above its rate (deliberate RESOURCE_EXHAUSTED); a login
  every ~second (argon2), whose token the query user then uses;
- subscriber processes: ``--subscribers`` Subscribe streams (100 per connection) spread
  over users of their own (40 streams a user, the per-user burst); each stream starts with
  ``after_cursor=0``, records every notification's cursor and resumes after the last cursor
  it saw (notification or heartbeat) whenever the stream ends;
- a change to the simulator's catalogue every few seconds (one in ten an addition), each
  sending a signed webhook to the daemon (driven from here, so it can stop before the checks).

Measured, every few seconds during the soak: the daemon's RSS (/proc/<pid>/status VmRSS)
and open file descriptors (/proc/<pid>/fd): start (after the warm-up, all subscribers
connected), end, max and the least-squares slope per minute; calls by method and status.
Errors are anything but OK, NOT_FOUND (unknown ids only) and RESOURCE_EXHAUSTED (counted
apart as rate limiting); any error during warm-up, soak or after the restart is a problem,
and while the daemon stops only UNAVAILABLE or a refused connection is fine (no INTERNAL).

Graceful shutdown, at the end, under load: SIGTERM to the daemon while the load, the
streams and the changes go on; it must exit 0 within the deadline. Its committed state is
read from the file once it is down. Changes made while it is down lose their webhooks. It
is restarted on the same database and ports; the streams resume from their cursors; then
the changes and the load stop, an admin's TriggerSync fetches what the lost webhooks
carried, and once the daemon has settled (every delivery applied, the notifier at the end
of the log, every stream at its user's newest cursor) the checks run:

- ``reliability.invariants.check_all`` with the upstream's catalogue (``matches_upstream``);
- nothing committed before the SIGTERM is gone or changed (events, users, notifications,
  webhook deliveries), and every accepted webhook delivery is applied;
- for every user ``notifications_complete``, for subscribers with the union of the cursors
  their streams received (each at least once; duplicates within one stream are reported);
- memory and descriptors flat (see ``flatness``: a problem when both end - start and the
  fitted slope times the duration exceed 16 MiB or 10% of the start, 10 fds or 2%; the
  short run allows 64 MiB), and what the daemon logged above info (kept whole in
  reliability/results/soak-<process>-problems.log).

    .venv/bin/python -m reliability.soak [--minutes 10] [--subscribers 1000] [--short]

``--short`` (CI): 45 s of soak and 100 subscribers. Prints the figures and writes
reliability/results/soak.json; exit status 1 when any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import httpx
import trio
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from bench.harness import (
    MEMORY_TIER,
    PRIVATE_KEY,
    PUBLIC_KEY,
    SUBSCRIBERS,
    Sim,
    free_port,
    gauges,
    processes,
    rss_kib,
)
from bench.notifications import grpc_call, make_admin, trigger_sync
from marveld.proto.marvel import v1 as pb
from reliability.common import Report, report_logged
from reliability.invariants import (
    check_all,
    notifications_complete,
    reading,
    upstream_catalogue,
)

WEBHOOK_SECRET = "soak-webhook-secret"
PASSWORD = "soak password 1234"
CALL_SECONDS = 10.0
STREAMS_PER_CHANNEL = 100
STREAMS_PER_USER = 40  # the default per-user burst: a user's streams all open at once
QUERY_USERS = 3
QUERY_INTERVAL = 0.25  # seconds between two calls of one query user: ~4 a second each
GREEDY_BURST = 30  # calls every GREEDY_EVERY seconds: 15/s against a rate of 10/s
GREEDY_EVERY = 2.0
LOGIN_EVERY = 1.0
CHANGE_EVERY = 3.0
SAMPLE_EVERY = 5.0
STOP_DEADLINE = 20.0  # SIGTERM to exit
UNKNOWN_ID = 990_000_000
POPULAR_IDS = 150  # GetCharacter asks for these (a hot set, warmed up before the soak)
POPULAR_PREFIXES = ("Spider", "Iron", "Captain", "Hulk", "Thor", "Black")
POPULAR_SEARCHES = ("spider", "man", "iron", "storm")
ORDERS = ("name", "-name", "modified", "-modified")
# The soak keeps the rate limits on (the harness turns them off for benchmarks).
DAEMON = {
    "MARVELD_RATELIMIT_ENABLED": "true",
    "MARVELD_RATELIMIT_ANONYMOUS_RATE": "2",
    "MARVELD_RATELIMIT_ANONYMOUS_BURST": "30",
    "MARVELD_POLLER_ENABLED": "true",
    "MARVELD_WEBHOOK_SECRET": WEBHOOK_SECRET,
}

# Phases, as the clients tag what they count.
WARMUP, SOAK, SHUTDOWN, RESTARTED = 0, 1, 2, 3
PHASES = ("warm-up", "soak", "shutdown", "after restart")
OK_STATUSES = {"OK", "NOT_FOUND", "RESOURCE_EXHAUSTED"}
STOPPING_STATUSES = {"UNAVAILABLE", "CONNECTION"}  # also fine in the shutdown phase


@dataclass(frozen=True)
class Plan:
    soak_seconds: float
    subscribers: int
    warmup_seconds: float
    after_restart_seconds: float
    rss_allowed_mib: float = 16.0  # growth over the soak (also 10% of the start) that fails

    @property
    def subscriber_users(self) -> int:
        return max(1, math.ceil(self.subscribers / STREAMS_PER_USER))

    @property
    def workers(self) -> int:
        return 1 if self.subscribers <= 500 else 2

    @property
    def daemon(self) -> dict[str, str]:
        """The daemon's settings. The clients log in once, at the start, and a stream that
        resumes after the restart presents the same token: it must outlive the run (the
        default hour does not outlive a 60-minute soak)."""
        token_ttl = max(3600, math.ceil(self.soak_seconds + 2 * self.warmup_seconds + 900))
        return {**DAEMON, "MARVELD_AUTH_TOKEN_TTL": f"{token_ttl}s"}


@dataclass(frozen=True)
class Account:
    email: str
    user_id: str
    auth: dict[str, str]


def wait_for(condition: Callable[[], bool], what: str, seconds: float) -> float:
    """Poll ``condition`` until true; the seconds it took; RuntimeError at the deadline."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"not within {seconds:g}s: {what}")


# --- client processes -------------------------------------------------------------------


def _status(exc: BaseException) -> str:
    if isinstance(exc, GRPCError):
        return exc.status.name
    if isinstance(exc, asyncio.TimeoutError):
        return "CLIENT_TIMEOUT"
    return "CONNECTION"  # refused, reset, stream terminated: the daemon is away


CONNECTION_ERRORS = (OSError, StreamTerminatedError, ProtocolError, asyncio.TimeoutError)


@dataclass
class StreamState:
    user_id: str
    auth: dict[str, str]
    last: int = 0
    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    opened: int = 0
    resume_trailers: int = 0


def report_back(conn: Connection, main: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> None:
    """Run a worker's ``main`` and send its result, or how it failed, to the parent."""
    try:
        conn.send(asyncio.run(main()))
    except BaseException as exc:
        conn.send({"failed": repr(exc)})
        raise
    finally:
        conn.close()


def subscriber_worker(
    port: int,
    streams: list[tuple[str, dict[str, str]]],
    phase: Synchronized[int],
    conn: Connection,
) -> None:
    """A client process: one Subscribe stream per (user_id, auth), kept open (resumed after
    its last cursor) until the parent sends the users' final cursors; then reports."""

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        channels = [
            Channel("127.0.0.1", port) for _ in range(-(-len(streams) // STREAMS_PER_CHANNEL))
        ]
        states = [StreamState(user_id, auth) for user_id, auth in streams]
        statuses: Counter[tuple[int, str]] = Counter()

        async def run(state: StreamState, channel: Channel) -> None:
            while True:
                call = channel.request(
                    "/marvel.v1.NotificationService/Subscribe",
                    Cardinality.UNARY_STREAM,
                    pb.SubscribeRequest,
                    pb.Notification,
                    metadata=state.auth,
                )
                wait = random.uniform(0.3, 1.0)
                try:
                    async with call:
                        await call.send_message(
                            pb.SubscribeRequest(after_cursor=state.last), end=True
                        )
                        await call.recv_initial_metadata()
                        state.opened += 1
                        while (note := await call.recv_message()) is not None:
                            state.last = max(state.last, note.cursor)
                            if not note.heartbeat:
                                state.duplicates += note.cursor in state.seen
                                state.seen.add(note.cursor)
                        await call.recv_trailing_metadata()
                    statuses[phase.value, "OK"] += 1  # ended by the server without error
                except GRPCError as exc:
                    statuses[phase.value, exc.status.name] += 1
                    if "resume-cursor" in dict(call.trailing_metadata or {}):
                        state.resume_trailers += 1
                    if exc.status is Status.RESOURCE_EXHAUSTED:
                        wait = random.uniform(1.0, 3.0)
                except CONNECTION_ERRORS as exc:
                    statuses[phase.value, _status(exc)] += 1
                await asyncio.sleep(wait)

        tasks = [
            asyncio.ensure_future(run(state, channels[i // STREAMS_PER_CHANNEL]))
            for i, state in enumerate(states)
        ]
        try:
            targets, seconds = await loop.run_in_executor(None, conn.recv)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if all(s.last >= targets.get(s.user_id, 0) for s in states):
                    break
                await asyncio.sleep(0.2)
            lagging = sum(s.last < targets.get(s.user_id, 0) for s in states)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for channel in channels:
                channel.close()
        received: dict[str, list[int]] = {}
        for s in states:
            received.setdefault(s.user_id, []).extend(s.seen)
        return {
            "received": received,
            "delivered": sum(len(s.seen) for s in states),
            "duplicates": sum(s.duplicates for s in states),
            "opened": sum(s.opened for s in states),
            "resume_trailers": sum(s.resume_trailers for s in states),
            "lagging": lagging,
            "statuses": [[p, s, n] for (p, s), n in statuses.items()],
        }

    report_back(conn, main)


def load_worker(
    port: int,
    queriers: list[tuple[str, dict[str, str]]],
    greedy: dict[str, str],
    logins: list[str],
    known_ids: list[int],
    phase: Synchronized[int],
    stop: MpEvent,
    conn: Connection,
) -> None:
    """A client process: query users, a greedy user and logins until ``stop``; reports
    calls by (phase, method, status) and the soak's latencies."""

    async def main() -> dict[str, Any]:
        channel = Channel("127.0.0.1", port)
        characters = pb.CharacterServiceStub(channel)
        auth_stub = pb.AuthServiceStub(channel)
        statuses: Counter[tuple[int, str, str]] = Counter()
        cache: Counter[tuple[str, str]] = Counter()  # pages by method and cache status
        latencies: dict[str, list[float]] = {}
        tokens = {email: auth for email, auth in queriers}
        miss_number = 0
        popular_ids = known_ids[:: max(1, len(known_ids) // POPULAR_IDS)]

        async def call(method: str, make: Callable[[], Any]) -> None:
            current = phase.value
            started = time.perf_counter()
            try:
                answer = await make()
                status = "OK"
                if isinstance(answer, pb.CharacterPage):
                    cache[method, answer.cache_status.name] += 1
            except GRPCError as exc:
                status = exc.status.name
            except CONNECTION_ERRORS as exc:
                status = _status(exc)
            statuses[current, method, status] += 1
            if current == SOAK and status == "OK":
                latencies.setdefault(method, []).append(time.perf_counter() - started)

        def query(auth: dict[str, str]) -> tuple[str, Callable[[], Any]]:
            nonlocal miss_number
            kw: dict[str, Any] = {"timeout": CALL_SECONDS, "metadata": auth}
            roll = random.random()
            if roll < 0.3:
                prefix = random.choice(POPULAR_PREFIXES)
                request = pb.ListCharactersRequest(name_starts_with=prefix, limit=10)
                return "list hit", lambda: characters.list_characters(request, **kw)
            if roll < 0.5:
                search = pb.SearchCharactersRequest(query=random.choice(POPULAR_SEARCHES))
                return "search", lambda: characters.search_characters(search, **kw)
            if roll < 0.75:
                get = pb.GetCharacterRequest(id=random.choice(popular_ids))
                return "get", lambda: characters.get_character(get, **kw)
            if roll < 0.8:
                unknown = pb.GetCharacterRequest(id=UNKNOWN_ID + random.randrange(10**6))
                return "get unknown", lambda: characters.get_character(unknown, **kw)
            miss_number += 1
            miss = pb.ListCharactersRequest(
                order_by=ORDERS[miss_number % len(ORDERS)],
                offset=(miss_number // len(ORDERS)) % 2000,
                limit=1,  # small entries: the cache's growth is not what is measured
            )
            return "list miss", lambda: characters.list_characters(miss, **kw)

        async def querier(number: int, email: str) -> None:
            # Warm-up: this user's share of the popular ids, once, under its rate.
            for marvel_id in popular_ids[number :: len(queriers)]:
                get = partial(
                    characters.get_character,
                    pb.GetCharacterRequest(id=marvel_id),
                    timeout=CALL_SECONDS,
                    metadata=tokens[email],
                )
                await call("get", get)
                await asyncio.sleep(0.15)
            while not stop.is_set():
                await call(*query(tokens[email]))
                await asyncio.sleep(random.uniform(0.5, 1.5) * QUERY_INTERVAL)

        async def greedy_user() -> None:
            request = pb.GetCharacterRequest(id=known_ids[0])
            while not stop.is_set():
                burst = [
                    call(
                        "greedy get",
                        lambda: characters.get_character(
                            request, timeout=CALL_SECONDS, metadata=greedy
                        ),
                    )
                    for _ in range(GREEDY_BURST)
                ]
                await asyncio.gather(*burst)
                await asyncio.sleep(GREEDY_EVERY)

        async def login_loop() -> None:
            number = 0
            while not stop.is_set():
                await asyncio.sleep(random.uniform(0.5, 1.5) * LOGIN_EVERY)
                email = logins[number % len(logins)]
                number += 1
                current = phase.value
                try:
                    response = await auth_stub.login(
                        pb.LoginRequest(email=email, password=PASSWORD), timeout=CALL_SECONDS
                    )
                    status = "OK"
                    if email in tokens:  # the query user goes on with its new token
                        tokens[email] = {"authorization": f"Bearer {response.access_token}"}
                except GRPCError as exc:
                    status = exc.status.name
                except CONNECTION_ERRORS as exc:
                    status = _status(exc)
                statuses[current, "login", status] += 1

        try:
            await asyncio.gather(
                *(querier(i, email) for i, (email, _) in enumerate(queriers)),
                greedy_user(),
                login_loop(),
            )
        finally:
            channel.close()
        return {
            "statuses": [[p, m, s, n] for (p, m, s), n in statuses.items()],
            "latencies": latencies,
            "cache": [[m, s, n] for (m, s), n in cache.items()],
        }

    report_back(conn, main)


# --- the parent: setup, sampling, shutdown, checks --------------------------------------


def patiently(port: int, fn: Callable[[Channel], Any], what: str) -> Any:
    """One call, again while the anonymous rate limit refuses it (up to a minute)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return grpc_call(port, fn)
        except GRPCError as exc:
            if exc.status is not Status.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {exc.status.name} {exc.message}") from exc
            time.sleep(1.0)


def register(port: int, name: str) -> Account:
    """A new account and a token; waits out the anonymous rate limit when it refuses."""
    email = f"{name.lower()}@example.com"
    auth = pb.AuthServiceStub
    profile = patiently(
        port,
        lambda ch: auth(ch).register(
            pb.RegisterRequest(name=name, email=email, password=PASSWORD), timeout=CALL_SECONDS
        ),
        f"register {email}",
    )
    token = patiently(
        port,
        lambda ch: auth(ch).login(
            pb.LoginRequest(email=email, password=PASSWORD), timeout=CALL_SECONDS
        ),
        f"log in {email}",
    )
    return Account(email, profile.id, {"authorization": f"Bearer {token.access_token}"})


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with reading(db) as conn:
        return [tuple(row) for row in conn.execute(sql, args)]


def bootstrapped(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        rows = query(db, "SELECT value FROM sync_state WHERE key = 'sync.bootstrap'")
    except sqlite3.Error:
        return False  # not migrated yet
    return bool(rows) and json.loads(rows[0][0]).get("completed_at") is not None


def settled(db: Path) -> bool:
    """Every delivery applied and the notifier at the end of the log."""
    ((pending,),) = query(db, "SELECT count(*) FROM webhook_deliveries WHERE applied_at IS NULL")
    ((newest,),) = query(db, "SELECT COALESCE(max(seq), 0) FROM events")
    position = query(db, "SELECT value FROM sync_state WHERE key = 'notify.position'")
    return pending == 0 and bool(position) and int(position[0][0]) >= newest


def committed(db: Path) -> dict[str, set[Any]]:
    """What the file holds (the daemon being down: everything committed)."""
    return {
        "events": set(query(db, "SELECT seq, id, data FROM events")),
        "users": set(query(db, "SELECT id, email, role, created_at FROM users")),
        "notifications": set(query(db, "SELECT id, recipient_id, event_seq FROM notifications")),
        "webhook deliveries": set(query(db, "SELECT id FROM webhook_deliveries")),
        "applied deliveries": set(
            query(db, "SELECT id FROM webhook_deliveries WHERE applied_at IS NOT NULL")
        ),
    }


class Changer:
    """A change to the simulator's catalogue every ``every`` seconds (one in ten an
    addition), each with its webhook, in a thread until ``stop``."""

    def __init__(self, sim: Sim, known_ids: list[int], every: float) -> None:
        self._sim, self._ids, self._every = sim, known_ids, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.made = 0
        self.failed: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        rng = random.Random(7)
        with httpx.Client(base_url=self._sim.base_url, timeout=CALL_SECONDS) as http:
            while not self._stop.wait(self._every):
                self.made += 1
                if rng.random() < 0.1:
                    response = http.post(
                        "/_sim/characters", json={"name": f"Soak Hero {self.made}"}
                    )
                else:
                    target = rng.choice(self._ids)
                    response = http.post(
                        f"/_sim/characters/{target}",
                        json={"description": f"Soak change {self.made}."},
                    )
                if response.status_code >= 300:
                    self.failed.append(f"{response.status_code} {response.text[:200]}")


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) samples, per minute."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 60.0


def flatness(
    report: Report, name: str, samples: list[tuple[float, float]], unit: str, allowed: float
) -> None:
    """Figures of one resource; a problem when it grew by more than ``allowed`` over the
    soak (both end - start and the fitted slope times the duration must exceed it)."""
    values = [v for _, v in samples]
    start, end = values[0], values[-1]
    minutes = (samples[-1][0] - samples[0][0]) / 60
    slope = slope_per_minute(samples)
    report.figure(
        f"{name} start / end / max ({unit})", f"{start:,.1f} / {end:,.1f} / {max(values):,.1f}"
    )
    report.figure(f"{name} slope ({unit}/min)", round(slope, 3))
    if end - start > allowed and slope * minutes > allowed:
        report.problem(
            f"{name} grew from {start:,.1f} to {end:,.1f} {unit} over {minutes:.1f} min "
            f"({slope:+.2f} {unit}/min; allowed {allowed:g} {unit})"
        )


def spawn(ctx: Any, target: Callable[..., None], *args: Any) -> tuple[Any, Connection]:
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child), daemon=True)
    proc.start()
    child.close()
    return proc, parent


def collect(proc: Any, pipe: Connection, what: str, seconds: float) -> dict[str, Any]:
    if not pipe.poll(seconds):
        proc.kill()
        raise RuntimeError(f"{what} did not report within {seconds:g}s")
    result: dict[str, Any] = pipe.recv()
    proc.join(10)
    if "failed" in result:
        raise RuntimeError(f"{what} failed: {result['failed']}")
    return result


def soak(plan: Plan, report: Report) -> None:
    ctx = multiprocessing.get_context("spawn")
    with processes() as procs:
        grpc_port, http_port = free_port(), free_port()
        webhook_url = f"http://127.0.0.1:{http_port}/v1/webhooks/marvel"
        sim = procs.sim(
            args=["--webhook-url", webhook_url, "--seed", "7"],
            env={"MARVELD_WEBHOOK_SECRET": WEBHOOK_SECRET},
        )
        daemon = procs.daemon(sim, grpc_port=grpc_port, http_port=http_port, env=plan.daemon)
        procs.wait_ready(60)
        db = procs.tmp / "daemon.db"
        took = wait_for(lambda: bootstrapped(db), "the first sync (bootstrap)", 180)
        report.figure("first sync (s)", round(took, 1))

        admin = register(grpc_port, "Admin")
        trio.run(make_admin, db, admin.email)
        queriers = [register(grpc_port, f"Query{i}") for i in range(QUERY_USERS)]
        greedy = register(grpc_port, "Greedy")
        listeners = [register(grpc_port, f"Listener{i}") for i in range(plan.subscriber_users)]
        upstream = upstream_catalogue(sim.api_url, PUBLIC_KEY, PRIVATE_KEY)
        known_ids = sorted(upstream)
        report.figure("upstream characters at start", len(known_ids))

        phase: Synchronized[int] = ctx.Value("i", WARMUP)
        stop = ctx.Event()
        streams = [
            (listeners[i % len(listeners)].user_id, listeners[i % len(listeners)].auth)
            for i in range(plan.subscribers)
        ]
        subscriber_procs = [
            spawn(ctx, subscriber_worker, grpc_port, streams[w :: plan.workers], phase)
            for w in range(plan.workers)
        ]
        load_proc = spawn(
            ctx,
            load_worker,
            grpc_port,
            [(a.email, a.auth) for a in queriers],
            greedy.auth,
            [a.email for a in (*queriers, *listeners)],
            known_ids,
            phase,
            stop,
        )
        children = [p for p, _ in (*subscriber_procs, load_proc)]

        def alive() -> None:
            for child in children:
                if child.exitcode is not None:
                    raise RuntimeError(f"a client process exited with {child.exitcode}")

        def all_subscribed() -> bool:
            alive()
            return gauges(daemon, SUBSCRIBERS)[0] >= plan.subscribers

        changer = Changer(sim, known_ids, CHANGE_EVERY)
        changer.start()
        took = wait_for(all_subscribed, f"{plan.subscribers} subscribers", 180)
        report.figure("subscribers connected (s)", round(took, 1))
        time.sleep(plan.warmup_seconds)

        # --- the soak
        phase.value = SOAK
        rss: list[tuple[float, float]] = []
        fds: list[tuple[float, float]] = []
        subscribers: list[float] = []
        tier: list[float] = []  # answers in the memory tier: what RSS may grow with
        started = time.monotonic()
        while True:
            now = time.monotonic() - started
            alive()
            rss.append((now, rss_kib(daemon.pid) / 1024))
            fds.append((now, fd_count(daemon.pid)))
            subscribed, entries = gauges(daemon, SUBSCRIBERS, MEMORY_TIER)
            subscribers.append(subscribed)
            tier.append(entries)
            if now >= plan.soak_seconds:
                break
            time.sleep(min(SAMPLE_EVERY, plan.soak_seconds - now))
        report.figure("soak (min)", round(rss[-1][0] / 60, 2))
        report.figure("samples", len(rss))
        flatness(report, "daemon RSS", rss, "MiB", max(plan.rss_allowed_mib, 0.1 * rss[0][1]))
        flatness(report, "daemon open fds", fds, "fds", max(10.0, 0.02 * fds[0][1]))
        report.figure("memory tier entries start / end", f"{tier[0]:.0f} / {tier[-1]:.0f}")
        fewest, most = min(subscribers), max(subscribers)
        report.figure("subscribers min / max (gauge)", f"{fewest:.0f} / {most:.0f}")
        if fewest < plan.subscribers:
            report.problem(f"only {fewest:.0f} of {plan.subscribers} subscribers at times")

        # --- graceful shutdown under load
        phase.value = SHUTDOWN
        before = committed(db)
        sigterm = time.monotonic()
        try:
            status = procs.terminate(daemon.proc, STOP_DEADLINE)
        except Exception as exc:  # TimeoutExpired: it ignored SIGTERM
            report.problem(f"the daemon did not exit within {STOP_DEADLINE:g}s of SIGTERM: {exc}")
            procs.kill(daemon.proc)
            status = -9
        report.figure("SIGTERM to exit (s)", round(time.monotonic() - sigterm, 2))
        if status != 0:
            report.problem(f"the daemon exited with status {status} on SIGTERM")
        down = committed(db)
        for what, rows in before.items():
            if lost := rows - down[what]:
                report.problem(f"{len(lost)} of the {what} read before SIGTERM gone at exit")
        time.sleep(max(CHANGE_EVERY * 1.5, 3.0))  # changes whose webhooks find nobody
        restart = time.monotonic()
        daemon = procs.daemon(sim, grpc_port=grpc_port, http_port=http_port, env=plan.daemon)
        procs.wait_ready(60)
        report.figure("restart to ready (s)", round(time.monotonic() - restart, 2))
        took = wait_for(all_subscribed, "the subscribers back after the restart", 180)
        report.figure("subscribers back after ready (s)", round(took, 1))
        phase.value = RESTARTED
        time.sleep(plan.after_restart_seconds)

        # --- settle: no more changes or load; fetch what the lost webhooks carried
        changer.stop()
        stop.set()
        load = collect(*load_proc, "the load process", 60)
        time.sleep(2.0)  # the last change's webhook
        trigger_sync(grpc_port, admin.auth, timeout=120)
        took = wait_for(lambda: settled(db), "deliveries applied, notifier at the end", 120)
        report.figure("settled after TriggerSync (s)", round(took, 1))
        targets = {
            user_id: cursor
            for user_id, cursor in query(
                db, "SELECT recipient_id, max(cursor) FROM notifications GROUP BY recipient_id"
            )
        }
        for _, pipe in subscriber_procs:
            pipe.send((targets, 120.0))
        results = [collect(p, pipe, "a subscriber process", 180) for p, pipe in subscriber_procs]
        final_rss, final_fds = rss_kib(daemon.pid) / 1024, fd_count(daemon.pid)
        upstream = upstream_catalogue(sim.api_url, PUBLIC_KEY, PRIVATE_KEY)
        after = committed(db)
        # The checks read the file once the daemon is down: nothing moves under them.
        procs.stop()

        figures_of_calls(report, load, results)
        report.figure("changes made", changer.made)
        report.figure("webhook deliveries accepted", len(after["webhook deliveries"]))
        report.figure("events (total)", len(after["events"]))
        report.figure("notifications (total)", len(after["notifications"]))
        report.figure("daemon RSS / fds after restart", f"{final_rss:,.1f} MiB / {final_fds}")
        for text in changer.failed[:5]:
            report.problem(f"a change to the simulator failed: {text}")
        for what, rows in down.items():
            if lost := rows - after[what]:
                report.problem(f"{len(lost)} of the {what} committed at SIGTERM gone at the end")
        if pending := after["webhook deliveries"] - after["applied deliveries"]:
            report.problem(f"{len(pending)} accepted webhook deliveries never applied")
        for text in check_all(db, upstream):
            report.problem(text)
        received: dict[str, set[int]] = {}
        for result in results:
            for user_id, cursors in result["received"].items():
                received.setdefault(user_id, set()).update(cursors)
        with reading(db) as conn:
            for account in (admin, *queriers, greedy, *listeners):
                got = received.get(account.user_id) if account in listeners else None
                for text in notifications_complete(conn, account.user_id, got):
                    report.problem(f"{account.email}: {text}")
        logged = procs.problems()
        for name, lines in logged.items():
            if name == "sim":  # webhooks refused while the daemon was down: expected
                report.figure("sim log lines above info", len(lines))
                continue
            report_logged(report, name, lines)


def figures_of_calls(report: Report, load: dict[str, Any], results: list[dict[str, Any]]) -> None:
    by_phase: dict[int, Counter[str]] = {}
    by_method: Counter[tuple[str, str]] = Counter()
    for p, method, status, n in load["statuses"]:
        by_phase.setdefault(p, Counter())[status] += n
        if p == SOAK:
            by_method[method, status] += n
    streams: dict[int, Counter[str]] = {}
    for result in results:
        for p, status, n in result["statuses"]:
            streams.setdefault(p, Counter())[status] += n
    soak_calls = by_phase.get(SOAK, Counter())
    total = sum(soak_calls.values())
    errors = sum(n for s, n in soak_calls.items() if s not in OK_STATUSES)
    report.figure("soak calls", total)
    report.figure("soak calls/s", round(total / max(1e-9, _soak_seconds(report)), 1))
    for (method, status), n in sorted(by_method.items()):
        report.figure(f"  {method} {status}", n)
    for method, samples in sorted(load["latencies"].items()):
        ordered = sorted(samples)
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        report.figure(f"  {method} p50 / p99 (ms)", f"{p50:.1f} / {p99:.1f}")
    pages: Counter[str] = Counter()
    for method, status, n in load["cache"]:
        pages[f"{method} {status}"] += n
    report.figure("pages by cache status (all phases)", dict(sorted(pages.items())))
    report.figure("rate limited (RESOURCE_EXHAUSTED)", soak_calls["RESOURCE_EXHAUSTED"])
    report.figure("soak errors", errors)
    report.figure("soak error rate", f"{errors / max(1, total):.4%}")
    for p in (WARMUP, SOAK, SHUTDOWN, RESTARTED):
        calls = {s: n for s, n in sorted(by_phase.get(p, Counter()).items())}
        ends = {s: n for s, n in sorted(streams.get(p, Counter()).items())}
        report.figure(f"calls in {PHASES[p]}", calls)
        report.figure(f"stream ends in {PHASES[p]}", ends)
        # While the daemon stops, a call may be refused: UNAVAILABLE, or no connection.
        allowed = OK_STATUSES | (STOPPING_STATUSES if p == SHUTDOWN else set())
        bad = {s: n for s, n in calls.items() if s not in allowed}
        bad_ends = {s: n for s, n in ends.items() if s not in allowed}
        if bad:
            report.problem(f"errors in {PHASES[p]}: {bad}")
        if bad_ends:
            report.problem(f"streams ended with errors in {PHASES[p]}: {bad_ends}")
    report.figure("notifications delivered (all streams)", sum(r["delivered"] for r in results))
    report.figure("streams opened (incl. resumes)", sum(r["opened"] for r in results))
    report.figure("UNAVAILABLE ends with resume-cursor", sum(r["resume_trailers"] for r in results))
    duplicates = sum(r["duplicates"] for r in results)
    report.figure("duplicates within a stream", duplicates)
    if duplicates:
        report.problem(f"{duplicates} notification(s) delivered twice to one stream")
    lagging = sum(r["lagging"] for r in results)
    if lagging:
        report.problem(f"{lagging} stream(s) never reached their user's newest cursor")


def _soak_seconds(report: Report) -> float:
    return float(report.figures.get("soak (min)", 0)) * 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--short", action="store_true", help="CI: 45 s, 100 subscribers")
    args = parser.parse_args(argv)
    if args.short:
        # 45 s is too short to tell CPython's step-wise arena growth from a leak: only a
        # gross one fails the short run.
        plan = Plan(45.0, 100, 15.0, after_restart_seconds=5.0, rss_allowed_mib=64.0)
    else:
        plan = Plan(args.minutes * 60, args.subscribers, 30.0, after_restart_seconds=15.0)
    report = Report(
        "soak",
        {
            "soak_s": plan.soak_seconds,
            "subscribers": plan.subscribers,
            "subscriber_users": plan.subscriber_users,
            "change_every_s": CHANGE_EVERY,
            "daemon": {k: v for k, v in plan.daemon.items() if "SECRET" not in k},
        },
    )
    try:
        soak(plan, report)
    except Exception as exc:
        report.problem(f"the run stopped: {type(exc).__name__}: {exc}")
    return report.finish()


if __name__ == "__main__":
    raise SystemExit(main())
