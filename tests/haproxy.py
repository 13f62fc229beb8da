"""HAProxy with the shipped configuration (config/haproxy.cfg) in front of test replicas.

HAProxy comes from the system (Debian: ``apt-get install haproxy``; .ci/run installs it
under CI). Where it is missing the cluster tests skip with one line saying so; under CI
(``CI`` set) they fail instead: CI must run them. In CI's second pass, under marveld's
unit's system-call rules (.ci/sandbox.py), they skip: those rules are marveld's, and
HAProxy, which raises its own descriptor limit, runs under a unit of its own.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from tests.waiting import wait_until

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "config" / "haproxy.cfg"
SERVICE_CONFIG = ROOT / "config" / "grpc-service-config.json"
SANDBOX_VARIABLE = "MARVELD_UNDER_UNIT_RULES"  # set by .ci/sandbox.py
START_SECONDS = 20


def haproxy() -> str:
    """HAProxy's binary, or a skip (a failure under CI) saying why there is none."""
    if os.environ.get(SANDBOX_VARIABLE):
        pytest.skip("HAProxy is not run under marveld's system-call rules (it has its own)")
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        why = "HAProxy is not installed (Debian: apt-get install haproxy)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run the cluster tests (.ci/run installs it)")
        pytest.skip(f"{why}: the cluster tests are skipped")
    return found


@dataclass(frozen=True)
class Backend:
    """One replica as HAProxy knows it: ``r1`` and its gRPC and HTTP ports."""

    name: str
    grpc_port: int
    http_port: int


@dataclass
class LoadBalancer:
    grpc_port: int
    http_port: int
    stats_port: int
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def states(self) -> dict[tuple[str, str], tuple[str, str]]:
        """Each server's state and last check, by (backend, server): ("UP", "L7OK"),
        ("DOWN", "L7STS"), ("UP 1/2", ...), ..."""
        async with httpx.AsyncClient(timeout=5) as http:
            text = (await http.get(f"http://127.0.0.1:{self.stats_port}/stats;csv")).text
        rows = csv.DictReader(io.StringIO(text.removeprefix("# ")))
        return {
            (row["pxname"], row["svname"]): (row["status"], row["check_status"])
            for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    async def up(self, *names: str) -> bool:
        """True when HAProxy has every named replica UP in both backends."""
        try:
            found = await self.states()
        except httpx.HTTPError:
            return False
        wanted = [(b, n) for b in ("marveld_grpc", "marveld_http") for n in names]
        states = {key: state for key, (state, _) in found.items()}
        checks = {key: check for key, (_, check) in found.items()}
        # A server counts as UP until its first check: wait for a check that passed.
        return all(states.get(key) == "UP" for key in wanted) and all(
            checks.get(key) == "L7OK" for key in wanted
        )


def environment(lb: LoadBalancer, backends: list[Backend]) -> dict[str, str]:
    """The variables config/haproxy.cfg reads its addresses from."""
    env = {
        "MARVELD_LB_GRPC": f"127.0.0.1:{lb.grpc_port}",
        "MARVELD_LB_HTTP": f"127.0.0.1:{lb.http_port}",
        "MARVELD_LB_STATS": f"127.0.0.1:{lb.stats_port}",
    }
    for i, b in enumerate(backends, start=1):
        env[f"MARVELD_R{i}_GRPC"] = f"127.0.0.1:{b.grpc_port}"
        env[f"MARVELD_R{i}_HTTP"] = f"127.0.0.1:{b.http_port}"
        env[f"MARVELD_R{i}_HTTP_PORT"] = str(b.http_port)
    return env


@asynccontextmanager
async def load_balancer(
    folder: Path, ports: tuple[int, int, int], backends: list[Backend]
) -> AsyncIterator[LoadBalancer]:
    """HAProxy on ``ports`` (gRPC, HTTP, stats) in front of ``backends`` (3), serving once
    this yields: its stats page answers and every backend is UP. Stopped on the way out."""
    binary = haproxy()
    lb = LoadBalancer(*ports, log=folder / "haproxy.log")
    env = {**os.environ, **environment(lb, backends)}
    with lb.log.open("wb") as out:
        proc = await trio.lowlevel.open_process(
            [binary, "-db", "-f", str(CONFIG)], env=env, stdout=out, stderr=out
        )
    try:
        names = [b.name for b in backends]
        await wait_until(
            lambda: proc.returncode is not None or lb.up(*names),
            seconds=START_SECONDS,
            what="HAProxy with every replica UP",
        )
        if proc.returncode is not None:
            raise AssertionError(f"haproxy exited {proc.returncode}: {lb.log.read_text()}")
        yield lb
    except BaseException:
        print(f"--- haproxy log ---\n{lb.log.read_text()[-4000:]}", file=sys.stderr)
        raise
    finally:
        with trio.CancelScope(shield=True):
            proc.terminate()
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
