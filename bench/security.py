"""What security costs: a login (argon2id at the shipped parameters), checking an access
token, a rate-limit check, and an authenticated call next to a health check.

In-process figures time marveld's own objects; live figures call ``marveld serve`` (started
as a subprocess by bench.latency, rate limits off) over loopback with grpclib, one call at a
time. Prints medians and writes bench/results/security.json.

    .venv/bin/python -m bench.security [--logins 20] [--verifies 20000] [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from bench.harness import RESULTS, TIMEOUT, live_daemon
from marveld.proto.marvel import v1 as pb
from marveld.services.ratelimit import RateLimiter
from marveld.services.security import (
    ARGON2_MEMORY_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    PasswordHasher,
    TokenIssuer,
)

PASSWORD = "a bench password"
SECRET = "bench-jwt-secret-bench-jwt-secret-0123"


def median_of(samples: list[float], scale: float) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "calls": len(ordered),
        "median": statistics.median(ordered) * scale,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * scale,
    }


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def in_process(logins: int, verifies: int) -> dict[str, dict[str, float]]:
    hasher = PasswordHasher()
    stored = hasher.hash(PASSWORD)
    tokens = TokenIssuer(
        SECRET, issuer="marveld", ttl_seconds=3600, previous_secrets=[SECRET[::-1]]
    )
    token = tokens.issue("a-user-id", datetime.now(UTC)).token
    now = datetime.now(UTC)
    limiter = RateLimiter(1e9, 1_000_000, time.monotonic)
    keys = [f"user-{i}" for i in range(1000)]
    counter = iter(range(10**9))
    timed(lambda: tokens.verify(token, now), 200)  # warm-up
    return {
        "argon2id_hash_ms": median_of(timed(lambda: hasher.hash(PASSWORD), logins), 1e3),
        "argon2id_verify_ms": median_of(
            timed(lambda: hasher.verify(stored, PASSWORD), logins), 1e3
        ),
        "token_verify_us": median_of(timed(lambda: tokens.verify(token, now), verifies), 1e6),
        "ratelimit_check_us": median_of(
            timed(lambda: limiter.check(keys[next(counter) % 1000]), verifies), 1e6
        ),
    }


async def live(grpc_port: int, logins: int, calls: int) -> dict[str, dict[str, float]]:
    channel = Channel("127.0.0.1", grpc_port)
    try:
        auth = pb.AuthServiceStub(channel)
        await auth.register(
            pb.RegisterRequest(name="Bench", email="sec@example.com", password=PASSWORD),
            timeout=TIMEOUT,
        )
        request = pb.LoginRequest(email="sec@example.com", password=PASSWORD)

        async def sample(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
            samples = []
            for _ in range(n):
                start = time.perf_counter()
                await call()
                samples.append(time.perf_counter() - start)
            return samples

        login_samples = await sample(lambda: auth.login(request, timeout=TIMEOUT), logins)
        token = (await auth.login(request, timeout=TIMEOUT)).access_token
        metadata = {"authorization": f"Bearer {token}"}
        users = pb.UserServiceStub(channel)
        health = HealthStub(channel)

        async def profile() -> None:
            await users.get_my_profile(pb.GetMyProfileRequest(), metadata=metadata, timeout=TIMEOUT)

        async def check() -> None:
            await health.Check(HealthCheckRequest(), timeout=TIMEOUT)

        await sample(check, 50)  # warm-up
        await sample(profile, 50)
        return {
            "login_rpc_ms": median_of(login_samples, 1e3),
            "health_check_ms": median_of(await sample(check, calls), 1e3),
            "get_my_profile_ms": median_of(await sample(profile, calls), 1e3),
        }
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=20)
    parser.add_argument("--verifies", type=int, default=20_000)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    figures = in_process(args.logins, args.verifies)
    with live_daemon() as grpc_port:
        figures.update(asyncio.run(live(grpc_port, args.logins, args.calls)))
    params = f"m={ARGON2_MEMORY_KIB} KiB, t={ARGON2_TIME_COST}, p={ARGON2_PARALLELISM}"
    print(f"Security costs, one at a time; argon2id at {params}")
    print(f"{'':34} {'calls':>6} {'median':>10} {'p99':>10}")
    rows = [
        ("argon2id hash (register)", "argon2id_hash_ms", "ms"),
        ("argon2id verify (login)", "argon2id_verify_ms", "ms"),
        ("Login RPC, live", "login_rpc_ms", "ms"),
        ("TokenIssuer.verify", "token_verify_us", "us"),
        ("RateLimiter.check", "ratelimit_check_us", "us"),
        ("Health/Check, live", "health_check_ms", "ms"),
        ("GetMyProfile (token + user), live", "get_my_profile_ms", "ms"),
    ]
    for label, key, unit in rows:
        row = figures[key]
        median, p99 = f"{row['median']:.3f} {unit}", f"{row['p99']:.3f} {unit}"
        print(f"{label:34} {row['calls']:>6.0f} {median:>10} {p99:>10}")
    extra = figures["get_my_profile_ms"]["median"] - figures["health_check_ms"]["median"]
    print(f"an authenticated call costs {extra:.3f} ms more than a health check (median)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "security.json"
    out.write_text(json.dumps({"measured_at": time.time(), **figures}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
