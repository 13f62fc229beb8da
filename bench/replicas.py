"""Three replicas on one PostgreSQL database, measured: how long leadership takes to move
after a kill -9, how long a change committed on one replica takes to reach another's
answers and another's subscribers, and how many upstream calls identical misses spread
over the replicas make.

Starts a throwaway PostgreSQL cluster (tests/postgres.py), one ``marveld sim`` (latency
50 ms for the misses) and three ``marveld serve`` on one database. Then:

- handover: ``--rounds`` times, kill -9 the leader, time until another replica's
  ``marveld_leader`` reads 1 (polled every 5 ms), start the killed one again;
- invalidation: a cached list is read on r2 (a memory-tier hit); a change is synced
  through r1; time from TriggerSync's answer (the commit) until r2's ListCharacters shows
  it (polled every 2 ms; the change deleted the cached row, so this includes r2's upstream
  call at the simulator's 50 ms);
- notifications: a subscriber on r1 and one on r2; a change synced through r1; time from
  TriggerSync's answer until each receives the notification (same replica / another);
- misses: ``--misses`` concurrent ListCharacters of one new query spread evenly over the
  three replicas; upstream calls counted by the simulator;
- fan-out: ``--subscribers`` idle Subscribe streams of one user, half on r1 and half on
  r2; one change synced through r1; commit-to-delivery per stream, p50/p99;
- hits: memory-tier hits per second on r1 alone (pinned to CPU 0, two client processes)
  and spread over r1 and r2 (pinned to CPU 0 and 1, one client process each), side by
  side, ``--hit-rounds`` rounds alternating which goes first; the clients are not pinned
  (on a 2-core machine they share the cores with the replicas).

Prints medians and maxima and writes bench/results/replicas.json.

    .venv/bin/python -m bench.replicas [--rounds 10] [--misses 999] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import trio
from grpclib.client import Channel

from bench.cache import HOT, INFLIGHT, Client, ClientProcesses, encode_request
from bench.harness import (
    RESULTS,
    SUBSCRIBERS,
    TIMEOUT,
    Daemon,
    Processes,
    Sim,
    gauges,
    login,
    percentile,
    processes,
)
from bench.notifications import (
    STREAMS_PER_CHANNEL,
    Subscribers,
    grpc_call,
    trigger_sync,
    wait_for,
)
from marveld.proto.marvel import v1 as pb
from marveld.storage import Store
from tests.postgres import Cluster, with_database

HULK = 1009351
NAMES = ("r1", "r2", "r3")


async def metric(daemon: Daemon, name: str) -> float:
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        text = (await http.get(f"http://127.0.0.1:{daemon.http_port}/metrics")).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def leader_of(replicas: dict[str, Daemon]) -> str | None:
    for name, daemon in replicas.items():
        if daemon.proc.poll() is None:
            try:
                if await metric(daemon, "marveld_leader") == 1.0:
                    return name
            except httpx.TransportError:
                continue
    return None


async def handover(procs: Processes, sim: Sim, url: str, replicas: dict[str, Daemon]) -> float:
    """Kill the leader; seconds until another one leads. The killed one is started again."""
    while (old := await leader_of(replicas)) is None:  # noqa: ASYNC110 - another process
        await asyncio.sleep(0.05)
    procs.kill(replicas[old].proc)
    started = time.perf_counter()
    while await leader_of(replicas) in (None, old):  # noqa: ASYNC110 - another process
        await asyncio.sleep(0.005)
    took = time.perf_counter() - started
    replicas[old] = start(procs, sim, url, old)
    procs.wait_ready()
    return took


def start(procs: Processes, sim: Sim, url: str, name: str) -> Daemon:
    env = {"MARVELD_DATABASE_URL": url, "MARVELD_REPLICA_ID": name}
    return procs.daemon(sim, name, env=env)


async def promote(url: str, email: str) -> None:
    async with Store.connect(path=Path("unused"), url=url) as store:
        await store.users.set_role(email, "admin", datetime.now(UTC))


async def change(sim: Sim, text: str) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url, timeout=TIMEOUT) as http:
        r = await http.post(
            f"/_sim/characters/{HULK}", json={"description": text}, params={"webhook": "false"}
        )
        r.raise_for_status()


async def sync(channel: Channel, admin: dict[str, str]) -> None:
    await pb.AdminServiceStub(channel).trigger_sync(
        pb.TriggerSyncRequest(), metadata=admin, timeout=TIMEOUT * 6
    )


async def hulk_reads(channel: Channel, auth: dict[str, str], text: str) -> bool:
    page = await pb.CharacterServiceStub(channel).list_characters(
        pb.ListCharactersRequest(name_starts_with="Hulk"), metadata=auth, timeout=TIMEOUT
    )
    return any(c.description == text for c in page.characters)


async def measure(
    procs: Processes, sim: Sim, url: str, replicas: dict[str, Daemon], args: argparse.Namespace
) -> dict[str, Any]:
    channels = {name: Channel("127.0.0.1", d.grpc_port) for name, d in replicas.items()}
    try:
        admin = await login(channels["r1"], "Admin")
        await asyncio.to_thread(trio.run, promote, url, "admin@example.com")
        auth = await login(channels["r2"], "Reader")
        await sync(channels["r1"], admin)  # the first full sync

        invalidation: list[float] = []
        for r in range(args.rounds):
            await hulk_reads(channels["r2"], auth, "")
            await hulk_reads(channels["r2"], auth, "")  # a memory-tier hit on r2 now
            text = f"Invalidation round {r}."
            await change(sim, text)
            await sync(channels["r1"], admin)
            committed = time.perf_counter()
            while not await hulk_reads(channels["r2"], auth, text):  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            invalidation.append(time.perf_counter() - committed)

        delivery: dict[str, list[float]] = {"same": [], "other": []}
        streams = {
            where: pb.NotificationServiceStub(channels[name]).subscribe(
                pb.SubscribeRequest(), metadata=auth, timeout=TIMEOUT * 60
            )
            for where, name in (("same", "r1"), ("other", "r2"))
        }
        iterators = {where: aiter(stream) for where, stream in streams.items()}
        for it in iterators.values():  # live: the first heartbeat
            while not (await anext(it)).heartbeat:
                pass
        for r in range(args.rounds):
            text = f"Notification round {r}."
            await change(sim, text)
            await sync(channels["r1"], admin)
            committed = time.perf_counter()

            async def received(where: str, text: str = text, committed: float = committed) -> None:
                while True:
                    note = await anext(iterators[where])
                    if not note.heartbeat and note.character.description == text:
                        delivery[where].append(time.perf_counter() - committed)
                        return

            await asyncio.gather(received("same"), received("other"))

        before = sim.requests()
        request = pb.ListCharactersRequest(name_starts_with="Thor")
        names = list(replicas)

        async def one(n: int) -> None:
            await pb.CharacterServiceStub(channels[names[n % len(names)]]).list_characters(
                request, metadata=auth, timeout=TIMEOUT
            )

        await asyncio.gather(*(one(n) for n in range(args.misses)))
        miss_calls = sim.requests() - before

        scaling = await hits_scaling(replicas, auth, args)
        takeovers = [await handover(procs, sim, url, replicas) for _ in range(args.rounds)]
    finally:
        for channel in channels.values():
            channel.close()
    return {
        "hits": scaling,
        "handover_s": takeovers,
        "invalidation_s": invalidation,
        "delivery_same_replica_s": delivery["same"],
        "delivery_other_replica_s": delivery["other"],
        "identical_misses": args.misses,
        "upstream_calls_for_them": miss_calls,
    }


def pin(pid: int, cpu: int) -> None:
    """Every thread of process ``pid`` onto ``cpu`` (a process's affinity is per thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


async def hits_scaling(
    replicas: dict[str, Daemon], auth: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """Memory-tier hits per second: all on r1 (pinned to CPU 0), then spread evenly over r1
    and r2 (pinned to CPU 0 and CPU 1), rounds alternating which goes first. The client
    processes are not pinned: on this 2-core machine they share the cores with r2."""
    r1, r2 = replicas["r1"], replicas["r2"]
    pin(r1.pid, 0)
    pin(r2.pid, 1)
    for daemon in (r1, r2):  # the page in each one's memory tier
        client = Client(daemon.grpc_port)
        client.metadata = auth
        await client.list(encode_request(HOT))
        client.close()
    one = ClientProcesses(2, r1.grpc_port, auth)
    spread = [ClientProcesses(1, d.grpc_port, auth) for d in (r1, r2)]
    results: dict[str, list[dict[str, float]]] = {"one_replica": [], "two_replicas": []}
    try:
        for r in range(args.hit_rounds):
            order = (
                ("one_replica", "two_replicas") if r % 2 == 0 else ("two_replicas", "one_replica")
            )
            for setup in order:
                if setup == "one_replica":
                    run = one.run("hit", args.hits, INFLIGHT, r1, 120)
                    cpu = run.daemon_cpu
                else:
                    runs = await asyncio.gather(
                        asyncio.to_thread(
                            spread[0].run, "hit", args.hits // 2, INFLIGHT // 2, r1, 120
                        ),
                        asyncio.to_thread(
                            spread[1].run, "hit", args.hits // 2, INFLIGHT // 2, r2, 120
                        ),
                    )
                    run = runs[0]
                    run.latencies += runs[1].latencies
                    run.wall = max(x.wall for x in runs)
                    cpu = sum(x.daemon_cpu for x in runs)
                results[setup].append(
                    {"calls_per_s": run.calls / run.wall, "calls_per_daemon_cpu_s": run.calls / cpu}
                )
    finally:
        one.close()
        for clients in spread:
            clients.close()
    medians = {
        setup: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for setup, rows in results.items()
    }
    ratio = medians["two_replicas"]["calls_per_s"] / medians["one_replica"]["calls_per_s"]
    return {**medians, "ratio": ratio, "rounds": results, "cpus": os.cpu_count()}


def fan_out(replicas: dict[str, Daemon], sim: Sim, url: str, subscribers: int) -> dict[str, Any]:
    """``subscribers`` idle Subscribe streams of one user, half on r1 and half on r2 (one
    client process each); one change synced through r1; commit-to-delivery per stream =
    the client's receive time minus the event's commit time (``events.created_at``)."""
    r1, r2 = replicas["r1"], replicas["r2"]
    admin = grpc_call(r1.grpc_port, lambda ch: login(ch, "Fanadmin"))
    trio.run(promote, url, "fanadmin@example.com")
    auth = grpc_call(r1.grpc_port, lambda ch: login(ch, "Fan"))
    half = subscribers // 2 + subscribers % 2
    targets = [(r1.grpc_port, half), (r2.grpc_port, subscribers - half)]
    clients = Subscribers.start(targets, auth, STREAMS_PER_CHANNEL)
    try:

        def all_subscribed() -> bool:
            if clients.failed():
                raise RuntimeError("a client process failed")
            return sum(gauges(d, SUBSCRIBERS)[0] for d in (r1, r2)) >= subscribers

        wait_for(all_subscribed, f"{subscribers} subscribers")
        httpx.post(
            f"{sim.base_url}/_sim/characters/{HULK}",
            json={"description": "Fan-out over two replicas."},
            params={"webhook": "false"},
            timeout=TIMEOUT,
        ).raise_for_status()
        trigger_sync(r1.grpc_port, admin)
        received = clients.received()
    finally:
        clients.stop()
    with psycopg.connect(url) as conn:
        committed = {
            str(event_id): float(at)
            for event_id, at in conn.execute(
                "SELECT id, extract(epoch FROM created_at) FROM events"
            ).fetchall()
        }
    by_replica = {"r1": received[:half], "r2": received[half:]}
    delays = {
        name: sorted(at - committed[event_id] for event_id, at in got if event_id)
        for name, got in by_replica.items()
    }
    everyone = sorted(delays["r1"] + delays["r2"])
    return {
        "subscribers": subscribers,
        "delivered": len(everyone),
        "p50_ms": percentile(everyone, 0.5) * 1000,
        "p99_ms": percentile(everyone, 0.99) * 1000,
        "max_ms": everyone[-1] * 1000,
        "p99_ms_on_r1": percentile(delays["r1"], 0.99) * 1000,
        "p99_ms_on_r2": percentile(delays["r2"], 0.99) * 1000,
    }


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    return f"median {statistics.median(ms):7.1f} ms   max {ms[-1]:7.1f} ms   ({len(ms)} rounds)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--misses", type=int, default=999)
    parser.add_argument("--hits", type=int, default=20_000, help="hits per setup and round")
    parser.add_argument("--hit-rounds", type=int, default=5)
    parser.add_argument("--subscribers", type=int, default=10_000, help="fan-out streams")
    parser.add_argument("--quick", action="store_true", help="smaller runs, to check wiring")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.misses, args.hits, args.hit_rounds = 3, 99, 2000, 2
        args.subscribers = 400
    folder = Path(tempfile.mkdtemp(prefix="marveld-bench-replicas-"))
    folder.chmod(0o755)  # the server's user (postgres, when we are root) goes through it
    cluster = Cluster.start(folder / "cluster")
    try:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_replicas")
        url = with_database(cluster.url, "bench_replicas")
        with processes() as procs:
            sim = procs.sim(latency_ms=50)
            replicas = {name: start(procs, sim, url, name) for name in NAMES}
            procs.wait_ready()
            figures = asyncio.run(measure(procs, sim, url, replicas, args))
            figures["fan_out"] = fan_out(replicas, sim, url, args.subscribers)
    finally:
        cluster.stop()
    hits = figures["hits"]
    print("3 replicas on one PostgreSQL database (bench/replicas.py)")
    for setup in ("one_replica", "two_replicas"):
        print(
            f"memory-tier hits, {setup.replace('_', ' '):12}: "
            f"{hits[setup]['calls_per_s']:8.0f} calls/s, "
            f"{hits[setup]['calls_per_daemon_cpu_s']:6.0f} calls per replica-CPU-second"
        )
    print(f"two replicas / one: {hits['ratio']:.2f}x ({hits['cpus']} CPUs, clients included)")
    print(f"leader killed -> another leads:           {summary(figures['handover_s'])}")
    print(f"commit on r1 -> r2 serves the change:      {summary(figures['invalidation_s'])}")
    print(
        f"commit on r1 -> subscriber on r1 has it:   {summary(figures['delivery_same_replica_s'])}"
    )
    print(
        f"commit on r1 -> subscriber on r2 has it:   {summary(figures['delivery_other_replica_s'])}"
    )
    print(
        f"{figures['identical_misses']} identical misses over 3 replicas: "
        f"{figures['upstream_calls_for_them']} upstream call(s)"
    )
    fan = figures["fan_out"]
    print(
        f"one change to {fan['subscribers']} subscribers over r1 and r2: "
        f"{fan['delivered']} delivered, commit to delivery p50 {fan['p50_ms']:.0f} ms, "
        f"p99 {fan['p99_ms']:.0f} ms (r1 {fan['p99_ms_on_r1']:.0f}, "
        f"r2 {fan['p99_ms_on_r2']:.0f}), max {fan['max_ms']:.0f} ms"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "replicas.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
