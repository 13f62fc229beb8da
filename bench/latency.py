"""ListCharacters latency: cache hit vs cache miss vs a health check, live, on loopback.

Starts ``marveld sim`` (latency 0) and ``marveld serve`` as subprocesses, then calls the
daemon from this process with grpclib: sequential hits on one query, then misses on distinct
queries. Prints medians and p99 and writes bench/results/latency.json.

    .venv/bin/python -m bench.latency [--hits 2000] [--misses 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from marveld.proto.marvel import v1 as pb

RESULTS = Path(__file__).parent / "results"
TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {seconds:.0f}s")


@contextmanager
def live_daemon() -> Iterator[int]:
    """``marveld sim`` and ``marveld serve`` in subprocesses; yields the gRPC port."""
    with tempfile.TemporaryDirectory() as tmp:
        sim_port, grpc_port, http_port = free_port(), free_port(), free_port()
        env = {
            **os.environ,
            "MARVEL_PUBLIC_KEY": "bench-public",
            "MARVEL_PRIVATE_KEY": "bench-private",
            "MARVELD_JWT_SECRET": "bench-jwt-secret-bench-jwt-secret-0123",
            "MARVELD_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
            "MARVELD_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "MARVELD_DATABASE_PATH": str(Path(tmp) / "bench.db"),
            "MARVELD_UPSTREAM_URL": f"http://127.0.0.1:{sim_port}/v1/public",
            "MARVELD_LOG_LEVEL": "warning",
            # No background first sync competing with the calls measured (bench/sync.py).
            "MARVELD_POLLER_ENABLED": "false",
        }
        config = Path(tmp) / "marveld.toml"
        config.touch()
        marveld = [sys.executable, "-m", "marveld"]
        logs = (Path(tmp) / "sim.log").open("w"), (Path(tmp) / "daemon.log").open("w")
        sim = subprocess.Popen([*marveld, "sim", "--port", str(sim_port)], env=env, stderr=logs[0])
        daemon = subprocess.Popen(
            [*marveld, "serve", "--config", str(config)], env=env, stderr=logs[1]
        )
        try:
            wait_until_up(f"http://127.0.0.1:{sim_port}/_sim/stats")
            wait_until_up(f"http://127.0.0.1:{http_port}/healthz")
            yield grpc_port
        finally:
            for proc in (daemon, sim):
                proc.terminate()
                proc.wait(10)
            for log in logs:
                log.close()


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "calls": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


async def measure(grpc_port: int, hits: int, misses: int) -> dict[str, dict[str, float]]:
    channel = Channel("127.0.0.1", grpc_port)
    try:
        auth = pb.AuthServiceStub(channel)
        await auth.register(
            pb.RegisterRequest(name="Bench", email="bench@example.com", password="bench password"),
            timeout=TIMEOUT,
        )
        token = await auth.login(
            pb.LoginRequest(email="bench@example.com", password="bench password"), timeout=TIMEOUT
        )
        metadata = {"authorization": f"Bearer {token.access_token}"}
        characters = pb.CharacterServiceStub(channel)

        async def timed(request: pb.ListCharactersRequest, expect: pb.CacheStatus) -> float:
            start = time.perf_counter()
            page = await characters.list_characters(request, metadata=metadata, timeout=TIMEOUT)
            elapsed = time.perf_counter() - start
            assert page.cache_status is expect, (page.cache_status, expect)
            return elapsed

        health = HealthStub(channel)

        async def timed_health() -> float:
            start = time.perf_counter()
            await health.Check(HealthCheckRequest(), timeout=TIMEOUT)
            return time.perf_counter() - start

        for _ in range(50):  # warm-up
            await timed_health()
        health_samples = [await timed_health() for _ in range(hits)]

        hot = pb.ListCharactersRequest(limit=20)
        await timed(hot, pb.CacheStatus.MISS)
        for _ in range(50):  # warm-up
            await timed(hot, pb.CacheStatus.HIT)
        hit_samples = [await timed(hot, pb.CacheStatus.HIT) for _ in range(hits)]
        # Distinct queries: each (limit, offset) pair is a new cache key.
        miss_samples = [
            await timed(pb.ListCharactersRequest(limit=20, offset=i + 1), pb.CacheStatus.MISS)
            for i in range(misses)
        ]
        return {
            "health_check": summarize(health_samples),
            "hit": summarize(hit_samples),
            "miss": summarize(miss_samples),
        }
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=2000)
    parser.add_argument("--misses", type=int, default=300)
    args = parser.parse_args(argv)
    with live_daemon() as grpc_port:
        figures = asyncio.run(measure(grpc_port, args.hits, args.misses))
    print("One call at a time over loopback, simulator latency 0; ListCharacters pages hold 20")
    print(f"{'':22} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} {'p50 / health':>13}")
    reference = figures["health_check"]["p50_ms"]
    for name, label in (
        ("health_check", "Health/Check"),
        ("hit", "ListCharacters hit"),
        ("miss", "ListCharacters miss"),
    ):
        row = figures[name]
        print(
            f"{label:22} {row['calls']:>6} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f}"
            f" {row['p50_ms'] / reference:>12.1f}x"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "latency.json"
    out.write_text(json.dumps({"measured_at": time.time(), **figures}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
