"""What capping glibc's malloc arenas costs, side by side.

``marveld serve`` caps glibc at two malloc arenas (marveld/malloc.py): without the cap a
60-minute soak's RSS grew by one ~21 MiB arena per worker thread (docs/reliability.md).
This benchmark runs two daemons against one simulator (latency 0), one as it starts by
default (capped) and one with ``MALLOC_ARENA_MAX=16``, glibc's own default on a 2-core
machine (8 per core), and calls both alike with work that runs on trio's worker threads,
where the arenas matter (the memory tier is off in both):

- SQLite-tier hits, one call at a time and 64 in flight;
- misses, 16 in flight (an upstream call, a SQLite write).

Rounds alternate which daemon goes first. Prints each figure's median over the rounds,
capped over uncapped, and each daemon's RSS and virtual size at the end (an arena
reserves 64 MiB of address space). Writes bench/results/arenas.json.

    .venv/bin/python -m bench.arenas [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable
from typing import Any

from bench.cache import HOT, Client, distinct_queries, encode_request, medians, run_calls
from bench.harness import RESULTS, Daemon, memory_kib, processes

UNCAPPED = "16"  # glibc's default arena limit on this machine: 8 per core, 2 cores
KINDS = ("sqlite_hit", "sqlite_hit_64", "miss_16")
PHASE_SECONDS = 60.0


async def one_round(
    daemon: Daemon, client: Client, misses: list[bytes], hits: int
) -> dict[str, Any]:
    hot = encode_request(HOT)
    queue = iter(misses)

    def hit(n: int) -> Awaitable[str]:
        return client.list(hot, n)

    def miss(n: int) -> Awaitable[str]:
        return client.list(next(queue), n)

    runs = {
        "sqlite_hit": await run_calls(hit, hits, 1, seconds=PHASE_SECONDS, daemon=daemon),
        "sqlite_hit_64": await run_calls(hit, hits * 4, 64, seconds=PHASE_SECONDS, daemon=daemon),
        "miss_16": await run_calls(miss, len(misses), 16, seconds=PHASE_SECONDS, daemon=daemon),
    }
    return {kind: run.figures() for kind, run in runs.items()}


async def measure(daemons: dict[str, Daemon], rounds: int, hits: int, misses: int) -> Any:
    clients = {name: Client(d.grpc_port, channels=2) for name, d in daemons.items()}
    try:
        for name, client in clients.items():
            await client.login(f"Arenas{name}")
            hot = encode_request(HOT)
            for n in range(100):  # warm-up: the page in SQLite, threads started
                await client.list(hot, n)
        queries = distinct_queries(misses * rounds)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in daemons}
        order = list(daemons)
        for r in range(rounds):
            batch = queries[r * misses : (r + 1) * misses]
            for name in order if r % 2 == 0 else reversed(order):
                figures = await one_round(daemons[name], clients[name], batch, hits)
                results[name].append(figures)
                print(
                    f"round {r + 1} {name:9}",
                    "  ".join(f"{k} p50 {figures[k]['p50_ms']:.3f} ms" for k in KINDS),
                    flush=True,
                )
        return results
    finally:
        for client in clients.values():
            client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="smaller runs, to check wiring")
    args = parser.parse_args(argv)
    hits, misses = (200, 60) if args.quick else (1000, 300)
    os.environ.pop("MALLOC_ARENA_MAX", None)  # the capped daemon must run as by default
    with processes() as procs:
        sim = procs.sim()
        off = "0"  # the memory tier: every hit reads SQLite on a worker thread
        daemons = {
            "capped": procs.daemon(sim, "capped", MARVELD_CACHE_MEMORY_ENTRIES=off),
            "uncapped": procs.daemon(
                sim, "uncapped", MARVELD_CACHE_MEMORY_ENTRIES=off, MALLOC_ARENA_MAX=UNCAPPED
            ),
        }
        procs.wait_ready()
        rounds = asyncio.run(measure(daemons, args.rounds, hits, misses))
        memory = {
            name: {k: v for k, v in memory_kib(d.pid).items() if k in ("VmRSS", "VmSize")}
            for name, d in daemons.items()
        }
    summary = {
        name: {kind: medians([r[kind] for r in runs]) for kind in KINDS}
        for name, runs in rounds.items()
    }
    print(
        f"\n{args.rounds} rounds, medians; capped = marveld's default (2 arenas), uncapped ="
        f" MALLOC_ARENA_MAX={UNCAPPED}"
    )
    header = f"{'':16} {'capped p50':>11} {'uncapped p50':>13} {'ratio':>6}"
    print(f"{header} {'capped/s':>9} {'uncapped/s':>11} {'capped CPU/call':>16} {'uncapped':>9}")
    for kind in KINDS:
        a, b = summary["capped"][kind], summary["uncapped"][kind]
        print(
            f"{kind:16} {a['p50_ms']:>8.3f} ms {b['p50_ms']:>10.3f} ms"
            f" {a['p50_ms'] / b['p50_ms']:>5.2f}x {a['calls_per_s']:>9.0f}"
            f" {b['calls_per_s']:>11.0f} {a['daemon_cpu_us_per_call']:>13.0f} us"
            f" {b['daemon_cpu_us_per_call']:>6.0f} us"
        )
    for name, vm in memory.items():
        print(f"{name:9} RSS {vm['VmRSS'] / 1024:.1f} MiB, virtual {vm['VmSize'] / 1024:.1f} MiB")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "arenas.json"
    record = {"measured_at": time.time(), "summary": summary, "memory_kib": memory}
    out.write_text(json.dumps({**record, "rounds": rounds}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
