"""SQLite vs PostgreSQL, side by side in one run: the same calls to daemons that differ
only in their database.

Starts one ``marveld sim`` (latency 0), a throwaway PostgreSQL cluster (tests/postgres.py:
fsync off, on this machine) and four ``marveld serve``: for each backend one as it starts
by default and one with the memory tier off (``cache.memory_entries = 0``: every hit reads
the database). Then, round after round, alternating which backend goes first:

- memory-tier hit: the same ListCharacters, one call at a time;
- database-tier hit: the same, on the daemon without a memory tier;
- miss: distinct queries, one at a time (an upstream call and a database write);
- a batch of 100 changed characters: 100 descriptions changed in the simulator, then one
  TriggerSync (a poll that applies the 100 changes: events, read rows, invalidation), timed
  by the caller.

Prints the medians over the rounds and PostgreSQL over SQLite; writes
bench/results/backends.json. Goals (issue 14): memory-tier hits cost the same on both, a
database-tier hit on PostgreSQL within 1.5x of SQLite's.

    .venv/bin/python -m bench.backends [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio
from grpclib.client import Channel

from bench.cache import HOT, Client, distinct_queries, encode_request, medians, run_calls
from bench.harness import RESULTS, TIMEOUT, Daemon, processes
from marveld.proto.marvel import v1 as pb
from marveld.storage import Store
from tests.postgres import Cluster, with_database

BACKENDS = ("sqlite", "postgres")
KINDS = ("memory_hit", "database_hit", "miss", "batch_100")
PHASE_SECONDS = 60.0
BATCH = 100


async def promote(url: str | None, db_path: Path, email: str) -> None:
    async with Store.connect(path=db_path, url=url) as store:
        await store.users.set_role(email, "admin", datetime.now(UTC))


async def trigger_sync(port: int, metadata: dict[str, str]) -> None:
    channel = Channel("127.0.0.1", port)
    try:
        await pb.AdminServiceStub(channel).trigger_sync(
            pb.TriggerSyncRequest(), metadata=metadata, timeout=TIMEOUT * 10
        )
    finally:
        channel.close()


async def change_characters(sim_base: str, ids: list[int], stamp: str) -> None:
    async with httpx.AsyncClient(base_url=sim_base, timeout=10) as http:
        for marvel_id in ids:
            r = await http.post(
                f"/_sim/characters/{marvel_id}",
                json={"description": f"Batch {stamp}."},
                params={"webhook": "false"},
            )
            r.raise_for_status()


async def measure(
    daemons: dict[str, dict[str, Daemon]],
    urls: dict[str, str | None],
    paths: dict[str, Path],
    sim_base: str,
    rounds: int,
    hits: int,
    misses: int,
) -> dict[str, list[dict[str, Any]]]:
    clients = {
        (b, tier): Client(d.grpc_port) for b, pair in daemons.items() for tier, d in pair.items()
    }
    admins: dict[str, dict[str, str]] = {}
    try:
        for (backend, tier), client in clients.items():
            await client.login(f"Bench{backend}{tier}")
        for backend, pair in daemons.items():
            admin = Client(pair["memory"].grpc_port)
            await admin.login(f"Admin{backend}")
            # The store is trio's; this loop is asyncio's: promote from a thread of its own.
            email = f"admin{backend}@example.com"
            await asyncio.to_thread(trio.run, promote, urls[backend], paths[backend], email)
            admins[backend] = admin.metadata
            admin.close()
            await trigger_sync(pair["memory"].grpc_port, admins[backend])  # the first sync
        hot = encode_request(HOT)
        for client in clients.values():
            for n in range(50):  # warm-up: the page stored, the pools filled
                await client.list(hot, n)
        ids = await character_ids(clients[("sqlite", "memory")])
        queries = iter(distinct_queries(misses * rounds * len(BACKENDS)))
        results: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
        for r in range(rounds):
            stamp = f"{r}-{time.time()}"
            await change_characters(sim_base, ids[:BATCH], stamp)
            for backend in BACKENDS if r % 2 == 0 else tuple(reversed(BACKENDS)):
                fast, slow = clients[(backend, "memory")], clients[(backend, "database")]
                memory, database = daemons[backend]["memory"], daemons[backend]["database"]

                def memory_hit(n: int, fast: Client = fast) -> Awaitable[str]:
                    return fast.list(hot)

                def database_hit(n: int, slow: Client = slow) -> Awaitable[str]:
                    return slow.list(hot)

                def miss(n: int, fast: Client = fast) -> Awaitable[str]:
                    return fast.list(next(queries))

                figures = {
                    "memory_hit": (
                        await run_calls(memory_hit, hits, 1, seconds=PHASE_SECONDS, daemon=memory)
                    ).figures(),
                    "database_hit": (
                        await run_calls(
                            database_hit, hits, 1, seconds=PHASE_SECONDS, daemon=database
                        )
                    ).figures(),
                    "miss": (
                        await run_calls(miss, misses, 1, seconds=PHASE_SECONDS, daemon=memory)
                    ).figures(),
                }
                started = time.perf_counter()
                await trigger_sync(memory.grpc_port, admins[backend])
                figures["batch_100"] = {"p50_ms": (time.perf_counter() - started) * 1000}
                results[backend].append(figures)
                print(
                    f"round {r + 1} {backend:8}",
                    "  ".join(f"{k} {figures[k]['p50_ms']:.3f} ms" for k in KINDS),
                    flush=True,
                )
        return results
    finally:
        for client in clients.values():
            client.close()


async def character_ids(client: Client) -> list[int]:
    stub = pb.CharacterServiceStub(client.channels[0])
    ids: list[int] = []
    offset = 0
    while len(ids) < BATCH:
        page = await stub.list_characters(
            pb.ListCharactersRequest(limit=100, offset=offset),
            metadata=client.metadata,
            timeout=TIMEOUT,
        )
        ids += [c.id for c in page.characters]
        offset += 100
        if not page.characters:
            break
    return ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller runs, to check wiring")
    args = parser.parse_args(argv)
    hits, misses = (200, 30) if args.quick else (1000, 150)
    folder = Path(tempfile.mkdtemp(prefix="marveld-bench-pg-"))
    folder.chmod(0o755)  # the server's user (postgres, when we are root) goes through it
    cluster = Cluster.start(folder / "cluster")
    try:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            for tier in ("memory", "database"):
                conn.execute(f"CREATE DATABASE bench_{tier}")
        with processes() as procs:
            sim = procs.sim()
            off = {"MARVELD_CACHE_MEMORY_ENTRIES": "0"}
            daemons: dict[str, dict[str, Daemon]] = {"sqlite": {}, "postgres": {}}
            for tier in ("memory", "database"):
                extra = off if tier == "database" else {}
                daemons["sqlite"][tier] = procs.daemon(sim, f"sqlite-{tier}", env=extra)
                pg = {"MARVELD_DATABASE_URL": with_database(cluster.url, f"bench_{tier}")}
                daemons["postgres"][tier] = procs.daemon(
                    sim, f"postgres-{tier}", env={**extra, **pg}
                )
            procs.wait_ready()
            urls = {"sqlite": None, "postgres": with_database(cluster.url, "bench_memory")}
            paths = {"sqlite": procs.tmp / "sqlite-memory.db", "postgres": Path("unused")}
            rounds = asyncio.run(
                measure(daemons, urls, paths, sim.base_url, args.rounds, hits, misses)
            )
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    summary = {b: {k: medians([r[k] for r in runs]) for k in KINDS} for b, runs in rounds.items()}
    print(f"\n{args.rounds} rounds, medians (p50 of each round's calls)")
    print(f"{'':14} {'SQLite':>10} {'PostgreSQL':>11} {'PG/SQLite':>10}")
    for kind in KINDS:
        a, b = summary["sqlite"][kind]["p50_ms"], summary["postgres"][kind]["p50_ms"]
        print(f"{kind:14} {a:>7.3f} ms {b:>8.3f} ms {b / a:>9.2f}x")
    RESULTS.mkdir(exist_ok=True)
    record = {"measured_at": time.time(), "summary": summary, "rounds": rounds}
    (RESULTS / "backends.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
