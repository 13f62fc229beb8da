"""Crash consistency: SIGKILL the daemon at random moments, restart it, check invariants.

One ``marveld sim`` (sending signed change webhooks to the daemon's fixed HTTP port) and
one daemon database, restarted ``--rounds`` times. Each round starts the daemon (poller
on, so the first rounds run and resume the bootstrap sync), waits until it answers, runs a
seeded random mix of work concurrently and SIGKILLs the process after a seeded random
delay:

- changes: the simulator changes (now and then adds) characters; each change sends a
  webhook the daemon records as pending and applies in the background;
- reads: ListCharacters calls with prefixes never asked before (cache misses, so each
  writes the SQLite cache tier);
- a subscriber: one registered user's Subscribe stream, kept across every round. It
  records every cursor it receives and, when the daemon dies, resumes with
  ``after_cursor`` = the last cursor it saw (a notification's or a heartbeat's).

What was in progress when the kill landed is read from the file afterwards (bootstrap not
complete; webhook deliveries recorded but not applied; the notifier's position behind the
event log) and from the harness (reads and webhook changes in flight), so the report can
say how many kills hit each phase. After each kill, before the restart, the file must pass
``integrity`` (PRAGMA integrity_check, foreign keys), ``event_log`` (one CharacterAdded per
character, no update applied twice) and ``projection`` (read model = fold of the events):
a crash may lose work not yet committed, never leave a half-applied one.

At the end the daemon is restarted once more and left to settle (first sync complete, a
TriggerSync as admin so changes whose webhooks were lost with a killed daemon are picked
up, every delivery applied, the notifier at the end of the log, the subscriber caught
up). Then: every upstream character stored once with the upstream's content
(``matches_upstream``), every notification the user is owed written once and received at
least once (``notifications_complete``), every webhook delivery applied, and the client
never saw cursors go backwards within one stream. Re-deliveries (a cursor received twice,
after a resume) are allowed and counted.

    python -m reliability.crash [--rounds 50] [--seed S] [--short]

Prints its figures and writes reliability/results/crash.json; exit status 1 on a problem.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import string
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from bench.harness import (
    MARVELD,
    SECRETS,
    Daemon,
    Processes,
    Sim,
    free_port,
    log_record,
    processes,
)
from marveld.proto.marvel import v1 as pb
from reliability import invariants
from reliability.common import Report, report_logged

DATASET = Path(__file__).parents[2] / "shared" / "data" / "marvel" / "characters.json"
WEBHOOK_SECRET = "crash-webhook-secret-crash-webhook-secret"
DAEMON = "crash"
PASSWORD = "crash suite password"
SUBSCRIBER = "subscriber@example.com"
ADMIN = "admin@example.com"
CALL_SECONDS = 20.0
READY_SECONDS = 60.0
SETTLE_SECONDS = 120.0
# Settings of every daemon start: the poller runs the (resumed) bootstrap, heartbeats
# come often so the subscriber's cursor moves even when nothing happens to it.
DAEMON_ENV = {
    "MARVELD_POLLER_ENABLED": "true",
    "MARVELD_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "MARVELD_NOTIFICATIONS_HEARTBEAT": "0.5s",
}
PHASES = (
    "bootstrap sync",
    "admin sync (poll)",
    "webhook application",
    "webhook in flight",
    "notification delivery",
    "cache write",
    "none of these",
)


class Timeout(RuntimeError):
    """A wait passed its deadline."""


async def wait_for(
    condition: Callable[[], Awaitable[bool]], what: str, seconds: float, every: float = 0.1
) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            raise Timeout(f"not within {seconds:g} s: {what}")
        await asyncio.sleep(every)


# --- the database file -------------------------------------------------------------------


def query(db: Path, sql: str, *args: Any) -> list[sqlite3.Row]:
    with invariants.reading(db) as conn:
        return list(conn.execute(sql, args))


def bootstrap_done(db: Path) -> bool:
    rows = query(db, "SELECT value FROM sync_state WHERE key = 'sync.bootstrap'")
    return bool(rows) and json.loads(rows[0][0]).get("completed_at") is not None


def pending_webhooks(db: Path) -> int:
    return int(query(db, "SELECT count(*) FROM webhook_deliveries WHERE applied_at IS NULL")[0][0])


def notifier_lag(db: Path) -> int:
    """Events committed that the notification saga has not stepped over yet."""
    (top,) = query(db, "SELECT coalesce(max(seq), 0) FROM events")[0]
    rows = query(db, "SELECT value FROM sync_state WHERE key = 'notify.position'")
    position = int(json.loads(rows[0][0])) if rows else 0
    return int(top) - position


def user_id(db: Path, email: str) -> str:
    return str(query(db, "SELECT id FROM users WHERE email = ?", email)[0][0])


# --- gRPC ---------------------------------------------------------------------------------


async def sign_in(port: int, email: str, *, register: bool = False) -> dict[str, str]:
    channel = Channel("127.0.0.1", port)
    try:
        auth = pb.AuthServiceStub(channel)
        if register:
            request = pb.RegisterRequest(name=email.split("@")[0], email=email, password=PASSWORD)
            await auth.register(request, timeout=CALL_SECONDS)
        token = await auth.login(
            pb.LoginRequest(email=email, password=PASSWORD), timeout=CALL_SECONDS
        )
    finally:
        channel.close()
    return {"authorization": f"Bearer {token.access_token}"}


@dataclass
class Subscriber:
    """One user's Subscribe stream, reopened after every failure with ``after_cursor`` =
    the last cursor received; what it received, stream by stream."""

    port: int
    auth: dict[str, str]
    email: str
    last: int = 0
    received: list[int] = field(default_factory=list)  # notification cursors, in order
    streams: int = 0
    backwards: list[str] = field(default_factory=list)  # cursors out of order in a stream
    errors: Counter[str] = field(default_factory=Counter)

    async def run(self) -> None:
        while True:
            try:
                await self._one_stream()
            except GRPCError as exc:
                self.errors[exc.status.name] += 1
                if exc.status is Status.UNAUTHENTICATED:
                    self.auth = await self._relogin()
            except Exception as e:  # the daemon died under it, in whatever way: resume
                self.errors[type(e).__name__] += 1
            await asyncio.sleep(0.1)

    async def _relogin(self) -> dict[str, str]:
        while True:
            try:
                return await sign_in(self.port, self.email)
            except (GRPCError, OSError, StreamTerminatedError, ConnectionError):
                await asyncio.sleep(0.2)

    async def _one_stream(self) -> None:
        channel = Channel("127.0.0.1", self.port)
        try:
            stub = pb.NotificationServiceStub(channel)
            start = self.last
            previous = start
            self.streams += 1
            request = pb.SubscribeRequest(after_cursor=start)
            async for note in stub.subscribe(request, metadata=self.auth, timeout=3600):
                if note.heartbeat:
                    self.last = max(self.last, note.cursor)
                    continue
                if note.cursor <= previous:
                    self.backwards.append(
                        f"stream {self.streams} (after {start}): {note.cursor} after {previous}"
                    )
                previous = note.cursor
                self.received.append(note.cursor)
                self.last = max(self.last, note.cursor)
        finally:
            channel.close()


# --- the workload --------------------------------------------------------------------------


@dataclass
class Workload:
    """Changes at the simulator and cache-missing reads at the daemon, until cancelled;
    counts of what was sent and what is in flight."""

    sim: Sim
    port: int
    auth: dict[str, str]
    ids: list[int]
    rng: random.Random
    asked: set[tuple[str, int]]
    changes: int = 0
    additions: int = 0
    reads: int = 0
    read_errors: int = 0
    reads_in_flight: int = 0
    syncs: int = 0
    syncs_in_flight: int = 0
    sync_errors: Counter[str] = field(default_factory=Counter)
    last_change: float = 0.0

    async def change(self, http: httpx.AsyncClient, pause: float, label: str) -> None:
        n = 0
        while True:
            await asyncio.sleep(self.rng.uniform(0, 2 * pause))
            n += 1
            if self.rng.random() < 0.05:
                name = f"Crash {label} {n} {self.rng.randrange(10**9)}"
                r = await http.post(f"{self.sim.base_url}/_sim/characters", json={"name": name})
                r.raise_for_status()
                self.ids.append(int(r.json().get("id", 0)) or self.ids[0])
                self.additions += 1
            else:
                marvel_id = self.rng.choice(self.ids)
                text = f"Changed in {label}, change {n} ({self.rng.randrange(10**9)})."
                r = await http.post(
                    f"{self.sim.base_url}/_sim/characters/{marvel_id}", json={"description": text}
                )
                r.raise_for_status()
                self.changes += 1
            self.last_change = time.monotonic()

    async def read(self, pause: float) -> None:
        channel = Channel("127.0.0.1", self.port)
        stub = pb.CharacterServiceStub(channel)
        try:
            while True:
                await asyncio.sleep(self.rng.uniform(0, 2 * pause))
                prefix, offset = self._new_query()
                request = pb.ListCharactersRequest(
                    name_starts_with=prefix, offset=offset, limit=self.rng.choice((5, 20, 100))
                )
                self.reads_in_flight += 1
                try:
                    await stub.list_characters(request, metadata=self.auth, timeout=CALL_SECONDS)
                    self.reads += 1
                except GRPCError:
                    self.read_errors += 1
                finally:
                    self.reads_in_flight -= 1
        finally:
            channel.close()

    async def sync(self, admin: dict[str, str]) -> None:
        """TriggerSync as admin, one after another: poll syncs racing the webhooks."""
        channel = Channel("127.0.0.1", self.port)
        stub = pb.AdminServiceStub(channel)
        try:
            while True:
                await asyncio.sleep(self.rng.uniform(0, 0.3))
                self.syncs_in_flight += 1
                try:
                    await stub.trigger_sync(
                        pb.TriggerSyncRequest(), metadata=admin, timeout=CALL_SECONDS
                    )
                    self.syncs += 1
                except GRPCError as exc:
                    self.sync_errors[exc.status.name] += 1
                finally:
                    self.syncs_in_flight -= 1
        finally:
            channel.close()

    def _new_query(self) -> tuple[str, int]:
        while True:
            length = self.rng.choice((1, 2, 2, 3))
            prefix = "".join(self.rng.choice(string.ascii_lowercase) for _ in range(length))
            key = (prefix, self.rng.choice((0, 0, 5, 10)))
            if key not in self.asked:
                self.asked.add(key)
                return key


# --- the suite -------------------------------------------------------------------------------


@dataclass
class Run:
    procs: Processes
    sim: Sim
    grpc_port: int
    http_port: int
    rng: random.Random
    report: Report
    db: Path
    subscriber: Subscriber | None = None
    admin: dict[str, str] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)
    asked: set[tuple[str, int]] = field(default_factory=set)
    phases: Counter[str] = field(default_factory=Counter)
    round_seconds: list[float] = field(default_factory=list)
    kill_delays: list[float] = field(default_factory=list)
    changes: int = 0
    additions: int = 0
    reads: int = 0
    read_errors: int = 0
    syncs: int = 0
    sync_errors: Counter[str] = field(default_factory=Counter)
    subscriber_task: asyncio.Task[None] | None = None
    granting: asyncio.Task[Any] | None = None

    def start_daemon(self) -> Daemon:
        daemon = self.procs.daemon(
            self.sim, DAEMON, grpc_port=self.grpc_port, http_port=self.http_port, env=DAEMON_ENV
        )
        self.procs.wait_ready(READY_SECONDS)
        return daemon

    async def setup(self) -> None:
        """The first start: the subscriber, and an admin (granted by the CLI, in the
        background: the bootstrap is not kept waiting for it)."""
        auth = await sign_in(self.grpc_port, SUBSCRIBER, register=True)
        await sign_in(self.grpc_port, ADMIN, register=True)
        self.subscriber = Subscriber(self.grpc_port, auth, SUBSCRIBER)
        self.subscriber_task = asyncio.create_task(self.subscriber.run())
        env = {**os.environ, **SECRETS, "MARVELD_DATABASE_PATH": str(self.db)}
        config = self.procs.tmp / "marveld.toml"
        command = [*MARVELD, "users", "grant-admin", "--config", str(config), ADMIN]
        self.granting = asyncio.create_task(
            asyncio.to_thread(
                subprocess.run, command, env=env, check=True, capture_output=True, timeout=60
            )
        )

    async def admin_token(self) -> dict[str, str] | None:
        """An admin's token once the role is granted (None before)."""
        if self.granting is None or not self.granting.done():
            return None
        self.granting.result()  # raises if the CLI failed
        if not self.admin:
            self.admin = await sign_in(self.grpc_port, ADMIN)
        return self.admin

    async def one_round(self, number: int) -> None:
        started = time.monotonic()
        target = None
        if not self.db.exists():
            target = self.rng.randint(100, 700)
        elif not bootstrap_done(self.db):
            stored = int(query(self.db, "SELECT count(*) FROM characters")[0][0])
            target = stored + self.rng.randint(100, 700)
            if target >= len(self.ids):  # near its end: a kill by time, it may be done
                target = None
        daemon = await asyncio.to_thread(self.start_daemon)
        if self.subscriber is None:
            await self.setup()
        assert self.subscriber is not None
        admin = await self.admin_token()
        workload = Workload(
            self.sim, self.grpc_port, self.subscriber.auth, self.ids, self.rng, self.asked
        )
        # The mix: changes, reads, admin syncs, at seeded rates; the bootstrap runs by
        # itself while it is not complete, and then the kill comes when it has stored a
        # random number more characters (a kill by time alone would miss its few seconds).
        mix = self.rng.choice(("changes", "reads", "both", "both", "all"))
        delay = self.rng.uniform(0.3, 3.0)
        async with httpx.AsyncClient(timeout=CALL_SECONDS) as http:
            tasks = []
            if mix in ("changes", "both", "all"):
                for _ in range(self.rng.choice((1, 2))):
                    pause = self.rng.uniform(0.02, 0.2)
                    tasks.append(asyncio.create_task(workload.change(http, pause, f"r{number}")))
            if mix in ("reads", "both", "all"):
                for _ in range(self.rng.choice((1, 2, 3))):
                    tasks.append(asyncio.create_task(workload.read(self.rng.uniform(0.01, 0.1))))
            if mix == "all" and target is None and admin is not None:
                tasks.append(asyncio.create_task(workload.sync(admin)))
            if target is None:
                await asyncio.sleep(delay)
            else:

                async def progressed() -> bool:
                    count = int(query(self.db, "SELECT count(*) FROM characters")[0][0])
                    return count >= target or bootstrap_done(self.db)

                await wait_for(progressed, f"the bootstrap storing {target}", READY_SECONDS, 0.02)
                await asyncio.sleep(self.rng.uniform(0, 0.1))
                delay = time.monotonic() - started
            reads_in_flight = workload.reads_in_flight
            syncs_in_flight = workload.syncs_in_flight
            recent_change = time.monotonic() - workload.last_change < 0.5
            self.procs.kill(daemon.proc)
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                self.report.problem(f"round {number}: the workload failed: {outcome!r}")
        self.kill_delays.append(delay)
        self.changes += workload.changes
        self.additions += workload.additions
        self.reads += workload.reads
        self.read_errors += workload.read_errors
        self.syncs += workload.syncs
        self.sync_errors.update(workload.sync_errors)

        phases = []
        if not bootstrap_done(self.db):
            phases.append("bootstrap sync")
        if syncs_in_flight:
            phases.append("admin sync (poll)")
        if pending_webhooks(self.db):
            phases.append("webhook application")
        elif recent_change:
            phases.append("webhook in flight")
        if notifier_lag(self.db) > 0 or self._undelivered():
            phases.append("notification delivery")
        if reads_in_flight:
            phases.append("cache write")
        self.phases.update(phases or ["none of these"])
        try:
            problems = await asyncio.to_thread(invariants.check_all, self.db)
        except Exception as exc:  # a check that cannot read the file is a finding too
            problems = [f"the checks failed: {exc!r}"]
        for text in problems:
            self.report.problem(f"after kill {number} ({', '.join(phases)}): {text}")
        self.round_seconds.append(time.monotonic() - started)
        print(
            f"round {number} ({mix}): killed after {delay:.2f} s in {', '.join(phases) or '-'};"
            f" {workload.changes + workload.additions} changes, {workload.reads} reads,"
            f" {workload.syncs} syncs; {len(problems)} problem(s)",
            flush=True,
        )

    def _undelivered(self) -> bool:
        """Whether the subscriber had not received a notification already written."""
        assert self.subscriber is not None
        uid = user_id(self.db, SUBSCRIBER)
        sql = "SELECT coalesce(max(cursor), 0) FROM notifications WHERE recipient_id = ?"
        return int(query(self.db, sql, uid)[0][0]) > self.subscriber.last

    async def settle(self) -> None:
        """The last start: everything caught up, then stopped cleanly."""
        assert self.subscriber is not None
        daemon = await asyncio.to_thread(self.start_daemon)
        readyz = f"http://127.0.0.1:{self.http_port}/readyz"
        async with httpx.AsyncClient(timeout=CALL_SECONDS) as http:

            async def first_sync() -> bool:
                checks = (await http.get(readyz)).json().get("checks", {})
                return bool(checks.get("first_sync"))

            await wait_for(first_sync, "the first sync completing", SETTLE_SECONDS, 0.5)
        if self.granting is not None:
            await self.granting
        self.admin = await sign_in(self.grpc_port, ADMIN)
        channel = Channel("127.0.0.1", self.grpc_port)
        try:
            admin = pb.AdminServiceStub(channel)
            synced = await admin.trigger_sync(
                pb.TriggerSyncRequest(), metadata=self.admin, timeout=SETTLE_SECONDS
            )
        finally:
            channel.close()
        self.report.figure("final TriggerSync", f"{synced.kind}, {synced.pages_fetched} page(s)")

        async def caught_up() -> bool:
            if pending_webhooks(self.db) or notifier_lag(self.db):
                return False
            rows = query(
                self.db,
                "SELECT event_seq FROM notifications WHERE recipient_id = ?",
                user_id(self.db, SUBSCRIBER),
            )
            return {int(r[0]) for r in rows} <= set(self.subscriber.received)  # type: ignore[union-attr]

        await wait_for(caught_up, "webhooks applied, notifier and subscriber caught up", 60)
        status = await asyncio.to_thread(self.procs.terminate, daemon.proc)
        if status != 0:
            self.report.problem(f"the last daemon exited with status {status} on SIGTERM")


async def crash_suite(
    rounds: int, seed: int, latency_ms: float, dataset: Path | None, report: Report
) -> None:
    rng = random.Random(seed)
    with processes() as procs:
        grpc_port, http_port = free_port(), free_port()
        webhook_url = f"http://127.0.0.1:{http_port}/v1/webhooks/marvel"
        args = ["--webhook-url", webhook_url, "--seed", str(seed)]
        if dataset is not None:
            args += ["--dataset", str(dataset)]
        sim = procs.sim(
            latency_ms=latency_ms, args=args, env={"MARVELD_WEBHOOK_SECRET": WEBHOOK_SECRET}
        )
        run = Run(procs, sim, grpc_port, http_port, rng, report, procs.tmp / f"{DAEMON}.db")
        await asyncio.to_thread(procs.wait_ready, READY_SECONDS)
        catalogue = await asyncio.to_thread(
            invariants.upstream_catalogue, sim.api_url, SECRETS["MARVEL_PUBLIC_KEY"],
            SECRETS["MARVEL_PRIVATE_KEY"],
        )  # fmt: skip
        run.ids = sorted(catalogue)
        report.figure("upstream characters at the start", len(catalogue))
        try:
            for number in range(1, rounds + 1):
                await run.one_round(number)
            await run.settle()
        finally:
            if run.subscriber_task is not None:
                run.subscriber_task.cancel()
                await asyncio.gather(run.subscriber_task, return_exceptions=True)
        final(run)
        procs.stop()
        log_problems(procs, report)


def final(run: Run) -> None:
    """The end-state checks and the figures."""
    report, db, subscriber = run.report, run.db, run.subscriber
    assert subscriber is not None
    upstream = invariants.upstream_catalogue(
        run.sim.api_url, SECRETS["MARVEL_PUBLIC_KEY"], SECRETS["MARVEL_PRIVATE_KEY"]
    )
    for text in invariants.check_all(db, upstream):
        report.problem(f"at the end: {text}")
    with invariants.reading(db) as conn:
        uid = user_id(db, SUBSCRIBER)
        for text in invariants.notifications_complete(conn, uid, subscriber.received):
            report.problem(f"at the end, subscriber: {text}")
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        by_type = dict(conn.execute("SELECT type, count(*) FROM events GROUP BY type").fetchall())
        (deliveries, unapplied) = conn.execute(
            "SELECT count(*), count(*) - count(applied_at) FROM webhook_deliveries"
        ).fetchone()
        (written,) = conn.execute(
            "SELECT count(*) FROM notifications WHERE recipient_id = ?", (uid,)
        ).fetchone()
        (cached,) = conn.execute("SELECT count(*) FROM cache").fetchone()
        (stored,) = conn.execute("SELECT count(*) FROM characters").fetchone()
    if unapplied:
        report.problem(f"at the end: {unapplied} webhook deliveries never applied")
    for text in subscriber.backwards[:10]:
        report.problem(f"subscriber: cursor went backwards in one stream: {text}")
    received = Counter(subscriber.received)
    seconds = run.round_seconds
    report.figure("rounds (kills)", len(seconds))
    for phase in PHASES:
        report.figure(f"kills during {phase}", run.phases[phase])
    report.figure("kill delay after ready, s (min/median/max)", _spread(run.kill_delays))
    report.figure("time per round, s (min/median/max)", _spread(seconds))
    report.figure("sim changes (+ characters added)", f"{run.changes} (+{run.additions})")
    report.figure("cache-missing reads (errors)", f"{run.reads} ({run.read_errors})")
    report.figure("admin TriggerSyncs completed (errors)", f"{run.syncs} {dict(run.sync_errors)}")
    report.figure("cache entries at the end", cached)
    report.figure("events", events)
    report.figure("events by type", by_type)
    report.figure("webhook deliveries recorded (unapplied)", f"{deliveries} ({unapplied})")
    report.figure("characters stored / upstream", f"{stored} / {len(upstream)}")
    report.figure("notifications owed to the subscriber", written)
    report.figure("notifications received (distinct)", len(received))
    report.figure("re-deliveries (same cursor again)", sum(n - 1 for n in received.values()))
    report.figure("subscribe streams opened", subscriber.streams)
    report.figure("stream endings by cause", dict(subscriber.errors))


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def log_problems(procs: Processes, report: Report) -> None:
    """Tracebacks or error-level lines in the processes' logs (warnings are expected: a
    killed daemon makes the simulator's webhooks fail)."""
    for name, lines in procs.problems().items():
        report_logged(
            report,
            name,
            [
                line
                for line in lines
                if (log_record(line) or {}).get("level") != "warning"
                and "exited with status -9" not in line
            ],
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability.crash", description=__doc__)
    parser.add_argument("--rounds", type=int, default=50, help="kills (default 50)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random choices")
    parser.add_argument("--short", action="store_true", help="5 rounds, for CI")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="simulator latency")
    args = parser.parse_args(argv)
    rounds = 5 if args.short else args.rounds
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    dataset = DATASET if DATASET.exists() else None
    settings = {"rounds": rounds, "seed": seed, "latency_ms": args.latency_ms}
    report = Report("crash", {**settings, "data": str(dataset or "generated")})
    try:
        asyncio.run(crash_suite(rounds, seed, args.latency_ms, dataset, report))
    except Timeout as exc:
        report.problem(str(exc))
    return report.finish()


if __name__ == "__main__":
    raise SystemExit(main())
