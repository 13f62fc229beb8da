"""Upstream faults: every fault the simulator can inject (``marveld/sim/faults.py``), and
what a gRPC client of marveld sees while it happens.

Starts ``marveld sim`` and ``marveld serve`` subprocesses (``bench/harness.py``) and turns
the simulator's faults on and off over ``PUT /_sim/faults``. For each fault:

- **once**: the next upstream call gets the fault, a new query asks for a page. Expected:
  OK after a retry (two upstream calls; a 429's ``Retry-After`` is waited out). A lying
  etag only matters to a conditional request, so for it the case is the revalidation
  below.
- **always**: every upstream call gets the fault. Expected: ``UNAVAILABLE`` with a message
  saying what failed, after at most ``upstream.max_attempts`` calls (two for answers that
  are unusable: a server that sends garbage twice will not stop).
- **stale**: a page cached before the fault, now expired, asked for again while every
  call fails. Expected: the old page, ``cache_status`` STALE (stale-if-error).

Then four scenarios with their own daemon: the **breaker** (failures open it, gRPC health
says NOT_SERVING and ``/readyz`` 503; it closes again once the upstream answers), the
**budget** (failing calls still spend the daily budget, and nothing is sent past it), and
the **lying etag** (a 304 for changed content: how long the old page is kept), and the
**first full sync while 30% of calls fail** (every character stored once all the same).

After every daemon, the database must pass ``invariants.check_all`` and hold no character
the simulator does not serve (nothing corrupt stored). Prints a table, writes
``reliability/results/faults.json``, exits 1 on any unexpected outcome.

    .venv/bin/python -m reliability.faults
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import httpx
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from bench.harness import Daemon, Processes, Sim, login, processes
from marveld.proto.marvel import v1 as pb
from marveld.sim.faults import Fault
from reliability import invariants
from reliability.common import Report

TIMEOUT_S = 2.0  # the daemon's upstream.timeout
ATTEMPTS = 3  # the daemon's upstream.max_attempts
CALL_DEADLINE = 30.0
# Retryable faults get ATTEMPTS calls; unusable answers are retried once.
UNUSABLE = {Fault.TRUNCATED, Fault.MALFORMED, Fault.WRONG_SHAPE, Fault.WRONG_TYPE}
MATRIX = [f for f in Fault if f is not Fault.LYING_ETAG]
MATRIX_SETTINGS = {
    "MARVELD_UPSTREAM_TIMEOUT": f"{TIMEOUT_S:g}s",
    "MARVELD_UPSTREAM_MAX_ATTEMPTS": str(ATTEMPTS),
    "MARVELD_UPSTREAM_BACKOFF_INITIAL": "0.05s",
    "MARVELD_UPSTREAM_BACKOFF_MAX": "2s",  # above the simulator's Retry-After: 1
    "MARVELD_UPSTREAM_BREAKER_FAILURES": "1000",  # the breaker has its own scenario
    "MARVELD_CACHE_TTL": "1s",
    "MARVELD_CACHE_STALE_WHILE_REVALIDATE": "0.01s",
    "MARVELD_CACHE_STALE_IF_ERROR": "1h",
    "MARVELD_CACHE_NEGATIVE_TTL": "1s",
    # Stale pages are asked for without their etag, so the faults that damage a body
    # meet a body to damage (a 304 has none); the lying-etag scenario sets its own.
    "MARVELD_UPSTREAM_ETAG_MAX_AGE": "0.5s",
    "MARVELD_LOG_LEVEL": "info",
}
SERVICE = "marvel.v1.CharacterService"
ETAG_MAX_AGE = 5.0  # the lying-etag scenario's upstream.etag_max_age
SYNC_FAULT_SHARE = 0.3
SYNC_DEADLINE = 120.0
_queries = itertools.count(1)


@dataclass
class Outcome:
    status: str
    message: str
    cache: str
    calls: int
    seconds: float


class Rig:
    """A daemon in front of a simulator, a logged-in client, the fault switch."""

    def __init__(self, sim: Sim, daemon: Daemon, channel: Channel, auth: dict[str, str]) -> None:
        self.sim, self.daemon, self.auth = sim, daemon, auth
        self.characters = pb.CharacterServiceStub(channel)
        self.health = HealthStub(channel)
        self.http = httpx.AsyncClient(timeout=10.0)

    async def faults(self, **plan: Any) -> None:
        answer = await self.http.put(f"{self.sim.base_url}/_sim/faults", json=plan)
        answer.raise_for_status()

    async def upstream_calls(self) -> int:
        stats = (await self.http.get(f"{self.sim.base_url}/_sim/stats")).json()
        return int(stats["requests"])

    async def ask(self, query: pb.ListCharactersRequest) -> Outcome:
        before = await self.upstream_calls()
        started = time.perf_counter()
        status, message, cache = "OK", "", ""
        try:
            page = await self.characters.list_characters(
                query, metadata=self.auth, timeout=CALL_DEADLINE
            )
            cache = pb.CacheStatus(page.cache_status).name.removeprefix("CACHE_STATUS_")
        except GRPCError as exc:
            status, message = exc.status.name, exc.message or ""
        seconds = time.perf_counter() - started
        return Outcome(status, message, cache, await self.upstream_calls() - before, seconds)

    async def serving(self) -> str:
        answer = await self.health.Check(HealthCheckRequest(service=SERVICE), timeout=5.0)
        return str(HealthCheckResponse.ServingStatus.Name(answer.status))

    async def ready(self) -> int:
        return (await self.http.get(f"http://127.0.0.1:{self.daemon.http_port}/readyz")).status_code


def fresh_query() -> pb.ListCharactersRequest:
    """A query no earlier case asked (a cache miss) with characters in its answer: five
    common initials, limits 1..20, offsets 0, 1, 2..."""
    n = next(_queries)
    return pb.ListCharactersRequest(
        name_starts_with="acmst"[n % 5], limit=1 + (n // 5) % 20, offset=n // 100
    )


class Live:
    """Processes and a rig, opened in one ``with``."""

    def __init__(self, procs: Processes, sim: Sim, **settings: str) -> None:
        self.procs, self.sim = procs, sim
        self.daemon = procs.daemon(sim, f"daemon-{next(_queries)}", env=settings)
        procs.wait_ready()

    async def __aenter__(self) -> Rig:
        self.channel = Channel("127.0.0.1", self.daemon.grpc_port)
        auth = await login(self.channel, name=f"Faults{next(_queries)}")
        self.rig = Rig(self.sim, self.daemon, self.channel, auth)
        return self.rig

    async def __aexit__(self, *exc: object) -> None:
        await self.rig.faults()
        await self.rig.http.aclose()
        self.channel.close()
        status = self.procs.terminate(self.daemon.proc)
        if status != 0:
            raise RuntimeError(f"{self.daemon.name} exited {status} on SIGTERM")


def expected_calls(fault: Fault) -> int:
    return 2 if fault in UNUSABLE else ATTEMPTS


async def matrix(procs: Processes, sim: Sim, report: Report, rows: list[list[str]]) -> None:
    async with Live(procs, sim, **MATRIX_SETTINGS) as rig:
        for fault in MATRIX:
            plan = {"hang_seconds": 3 * TIMEOUT_S, "slow_seconds": 2 * TIMEOUT_S}
            cached = fresh_query()
            warm = await rig.ask(cached)
            if warm.status != "OK":
                report.problem(f"{fault.value}: warming a page failed: {warm}")
            # once: the next call fails, the retry succeeds
            await rig.faults(script=[fault.value], **plan)
            once = await rig.ask(fresh_query())
            check(report, fault, "once", once, "OK", 2, rows)
            # always: every call fails
            await rig.faults(rates={fault.value: 1.0}, **plan)
            always = await rig.ask(fresh_query())
            check(report, fault, "always", always, "UNAVAILABLE", expected_calls(fault), rows)
            # stale: the expired page is served while every call fails
            await asyncio.sleep(1.1)  # the cache TTL (1 s) runs out: the page is stale
            stale = await rig.ask(cached)
            check(report, fault, "stale", stale, "OK", expected_calls(fault), rows, cache="STALE")
            await rig.faults()


def check(
    report: Report,
    fault: Fault,
    case: str,
    got: Outcome,
    status: str,
    calls: int,
    rows: list[list[str]],
    cache: str | None = None,
) -> None:
    wrong = []
    if got.status != status:
        wrong.append(f"status {got.status}, expected {status}")
    if got.calls != calls:
        wrong.append(f"{got.calls} upstream calls, expected {calls}")
    if cache is not None and got.cache != cache:
        wrong.append(f"cache {got.cache or '-'}, expected {cache}")
    if status != "OK" and not got.message:
        wrong.append("no message")
    verdict = "ok" if not wrong else "UNEXPECTED: " + "; ".join(wrong)
    for text in wrong:
        report.problem(f"{fault.value} {case}: {text} ({got.message[:120]})")
    rows.append(
        [
            fault.value,
            case,
            got.status + (f" {got.cache}" if got.cache else ""),
            str(got.calls),
            f"{got.seconds:.2f}",
            verdict,
            got.message[:90],
        ]
    )


async def breaker(procs: Processes, sim: Sim, report: Report) -> None:
    """Failures open the breaker: health and readiness follow, and recover."""
    settings = {
        **MATRIX_SETTINGS,
        "MARVELD_UPSTREAM_BREAKER_FAILURES": "5",
        "MARVELD_UPSTREAM_BREAKER_COOLDOWN": "2s",
    }
    async with Live(procs, sim, **settings) as rig:
        before = await rig.serving(), await rig.ready()
        await rig.faults(rates={"500": 1.0})
        asked = 0
        while await rig.serving() == "SERVING" and asked < 50:
            await rig.ask(fresh_query())
            asked += 1
        opened = await rig.serving(), await rig.ready()
        refused = await rig.ask(fresh_query())
        await rig.faults()
        await asyncio.sleep(2.1)  # the breaker's cooldown
        after_cooldown = await rig.ask(fresh_query())
        closed = await rig.serving(), await rig.ready()
    report.figure("breaker: health, readyz before", f"{before[0]}, {before[1]}")
    report.figure("breaker: failing calls until it opened", asked)
    report.figure("breaker: health, readyz while open", f"{opened[0]}, {opened[1]}")
    report.figure("breaker: a call while open", f"{refused.status}, {refused.calls} upstream calls")
    report.figure("breaker: first call after cooldown", f"{after_cooldown.status}")
    report.figure("breaker: health, readyz after", f"{closed[0]}, {closed[1]}")
    if opened != ("NOT_SERVING", 503) or refused.calls != 0 or refused.status != "UNAVAILABLE":
        report.problem(f"breaker did not open as expected: {opened}, {refused}")
    if closed != ("SERVING", 200) or after_cooldown.status != "OK":
        report.problem(f"breaker did not close after the upstream recovered: {closed}")


async def budget(procs: Processes, sim: Sim, report: Report) -> None:
    """Retries spend the daily budget; nothing is sent once it is spent."""
    limit = 20
    settings = {
        **MATRIX_SETTINGS,
        "MARVELD_UPSTREAM_DAILY_BUDGET": str(limit),
        "MARVELD_UPSTREAM_POLLER_RESERVE": "0",
    }
    async with Live(procs, sim, **settings) as rig:
        await rig.faults(rates={"503": 1.0})
        start = await rig.upstream_calls()
        statuses: dict[str, int] = {}
        message = ""
        for _ in range(2 * limit):
            got = await rig.ask(fresh_query())
            statuses[got.status] = statuses.get(got.status, 0) + 1
            message = got.message
        spent = await rig.upstream_calls() - start
    report.figure("budget: calls asked (every upstream call fails)", 2 * limit)
    report.figure("budget: upstream calls sent / daily budget", f"{spent} / {limit}")
    report.figure("budget: statuses", statuses)
    report.figure("budget: last message", message[:100])
    if spent > limit:
        report.problem(f"budget: {spent} upstream calls for a budget of {limit}")
    if set(statuses) != {"UNAVAILABLE"} or "budget" not in message:
        report.problem(f"budget: expected UNAVAILABLE naming the budget, got {statuses}")


async def lying_etag(procs: Processes, sim: Sim, report: Report) -> None:
    """The upstream answers 304 to every conditional request, though the content changed."""
    settings = {**MATRIX_SETTINGS, "MARVELD_UPSTREAM_ETAG_MAX_AGE": f"{ETAG_MAX_AGE:g}s"}
    async with Live(procs, sim, **settings) as rig:
        query = pb.ListCharactersRequest(name_starts_with="a", limit=1)
        first = await rig.characters.list_characters(query, metadata=rig.auth)
        target = first.characters[0]
        changed = f"changed by the lying-etag case at {time.time():.0f}"
        edit = f"{sim.base_url}/_sim/characters/{target.id}?webhook=false"
        (await rig.http.post(edit, json={"description": changed})).raise_for_status()
        await rig.faults(rates={"lying-etag": 1.0})
        started = time.perf_counter()
        seen, asked = "", 0
        while time.perf_counter() - started < 15.0:
            await asyncio.sleep(1.1)  # the cache TTL
            page = await rig.characters.list_characters(query, metadata=rig.auth)
            asked += 1
            seen = page.characters[0].description
            if seen == changed:
                break
        lied = (await rig.http.get(f"{sim.base_url}/_sim/faults")).json()["injected"]
    seconds = time.perf_counter() - started
    outcome = "the new content" if seen == changed else "still the old content"
    report.figure("lying etag: upstream.etag_max_age", f"{ETAG_MAX_AGE:g} s")
    report.figure("lying etag: 304s told for changed content", lied.get("lying-etag", 0))
    report.figure("lying etag: clients got", f"{outcome} after {seconds:.1f} s, {asked} asks")
    if seen != changed:
        report.problem("lying etag: the changed content never reached clients in 15 s")


async def sync_under_faults(procs: Processes, sim: Sim, report: Report) -> None:
    """The first full sync while 30% of upstream calls fail, every kind mixed: it retries
    and resumes until every character is stored, each once, with the upstream's content."""
    mixed = [f.value for f in MATRIX if f not in (Fault.TIMEOUT, Fault.SLOW_BODY)]
    rates = {name: SYNC_FAULT_SHARE / len(mixed) for name in mixed}
    settings = {**MATRIX_SETTINGS, "MARVELD_POLLER_ENABLED": "true"}
    await asyncio.to_thread(_put_plan, sim, {"rates": rates})
    started = time.perf_counter()
    before = await asyncio.to_thread(sim.requests)
    async with Live(procs, sim, **settings) as rig:
        ready = f"http://127.0.0.1:{rig.daemon.http_port}/readyz"
        deadline = time.monotonic() + SYNC_DEADLINE
        while time.monotonic() < deadline:
            checks = (await rig.http.get(ready)).json()["checks"]
            if checks.get("first_sync"):
                break
            await asyncio.sleep(0.2)
        else:
            report.problem(f"sync under faults: no first sync in {SYNC_DEADLINE:g} s")
        seconds = time.perf_counter() - started
        plan = (await rig.http.get(f"{sim.base_url}/_sim/faults")).json()
        calls = await rig.upstream_calls() - before
        db = procs.tmp / f"{rig.daemon.name}.db"
    upstream = invariants.upstream_catalogue(sim.api_url, *_keys())
    with invariants.reading(db) as conn:
        problems = invariants.matches_upstream(conn, upstream)
    for problem in problems:
        report.problem(f"sync under faults: {problem}")
    injected = sum(plan["injected"].values())
    report.figure("sync under 30% faults: first sync done after", f"{seconds:.1f} s")
    report.figure(
        "sync under 30% faults: upstream calls, faults among them", f"{calls}, {injected}"
    )
    report.figure("sync under 30% faults: characters stored = upstream", not problems)


def _put_plan(sim: Sim, plan: dict[str, Any]) -> None:
    httpx.put(f"{sim.base_url}/_sim/faults", json=plan).raise_for_status()


def stored_ids(db: Any) -> set[int]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return {row[0] for row in conn.execute("SELECT marvel_id FROM characters")}


def databases(procs: Processes) -> Iterator[Any]:
    return iter(sorted(procs.tmp.glob("daemon-*.db")))


async def run(report: Report, short: bool) -> list[list[str]]:
    rows: list[list[str]] = []
    with processes() as procs:
        sim = procs.sim()
        procs.wait_ready()
        await matrix(procs, sim, report, rows)
        await breaker(procs, sim, report)
        await budget(procs, sim, report)
        await lying_etag(procs, sim, report)
        await sync_under_faults(procs, sim, report)
        upstream = invariants.upstream_catalogue(sim.api_url, *_keys())
        for db in databases(procs):
            for problem in invariants.check_all(db):
                report.problem(f"{db.name}: {problem}")
            unknown = stored_ids(db) - upstream.keys()
            if unknown:
                report.problem(f"{db.name}: characters the upstream never served: {unknown}")
        report.figure(
            "databases checked (integrity, events, read model)", len(list(databases(procs)))
        )
        procs.stop()
        for name, lines in procs.problems().items():
            tracebacks = [line for line in lines if "Traceback" in line]
            if tracebacks:
                report.problem(f"{name} logged {len(tracebacks)} traceback(s)")
    return rows


def _keys() -> tuple[str, str]:
    from bench.harness import PRIVATE_KEY, PUBLIC_KEY

    return PUBLIC_KEY, PRIVATE_KEY


def print_rows(rows: list[list[str]]) -> None:
    head = ["fault", "case", "status", "calls", "s", "verdict", "message"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the same (it takes ~1 minute)")
    args = parser.parse_args(argv)
    report = Report("faults", settings={"daemon": MATRIX_SETTINGS})
    rows = asyncio.run(run(report, args.short))
    print_rows(rows)
    report.figure("cases", len(rows))
    report.figure("cases as expected", sum(r[5] == "ok" for r in rows))
    report.tables["matrix"] = rows
    return report.finish()


if __name__ == "__main__":
    raise SystemExit(main())
