"""What every benchmark shares: live ``marveld sim`` and ``marveld serve`` subprocesses on
loopback, their readiness, a logged-in user, and latency summaries.

Each process gets free ports, a database in a temp dir and its stderr in a log file there;
``processes()`` stops every one of them (terminate, wait) however the benchmark ends.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
from grpclib.client import Channel

from marveld.proto.marvel import v1 as pb

RESULTS = Path(__file__).parent / "results"
TIMEOUT = 10.0
PUBLIC_KEY = "bench-public"
PRIVATE_KEY = "bench-private"
SECRETS = {
    "MARVEL_PUBLIC_KEY": PUBLIC_KEY,
    "MARVEL_PRIVATE_KEY": PRIVATE_KEY,
    "MARVELD_JWT_SECRET": "bench-jwt-secret-bench-jwt-secret-0123",
}
# Settings every benchmark daemon starts with; a benchmark overrides what it measures.
# The budget is high so that misses are never refused unless a benchmark asks for it.
DAEMON_SETTINGS = {
    "MARVELD_LOG_LEVEL": "warning",
    "MARVELD_UPSTREAM_DAILY_BUDGET": "1000000",
    "MARVELD_RATELIMIT_ENABLED": "false",
    # No background sync: its upstream calls would count in the cache benchmarks' figures.
    "MARVELD_POLLER_ENABLED": "false",
}
MARVELD = [sys.executable, "-m", "marveld"]
STOP_SECONDS = 10.0
SIM_READY_SECONDS = 30.0
LOG_TAIL_LINES = 20
Popen = subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, seconds: float = 30.0, check: Callable[[], None] | None = None) -> None:
    """Poll ``url`` until it answers; ``check`` (called between tries) may raise."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {seconds:.0f}s")


@dataclass
class Sim:
    """A running ``marveld sim``."""

    name: str
    port: int
    latency_ms: float
    proc: Popen
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1/public"

    def stats(self) -> dict[str, int]:
        """The simulator's counters (``requests``: character API calls received)."""
        stats: dict[str, int] = httpx.get(f"{self.base_url}/_sim/stats", timeout=TIMEOUT).json()
        return stats

    def requests(self) -> int:
        return self.stats()["requests"]


@dataclass
class Daemon:
    """A running ``marveld serve``."""

    name: str
    grpc_port: int
    http_port: int
    proc: Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


class Processes:
    """Starts simulators and daemons in one temp dir; ``stop`` ends them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._config = tmp / "marveld.toml"
        self._config.touch()  # empty: the environment configures everything
        self._running: list[tuple[str, Popen, IO[bytes]]] = []
        self._pending: list[str] = []
        self.logs: list[Path] = []
        self.exits: dict[str, str] = {}  # how each process ended, when not cleanly

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> tuple[Path, Popen]:
        log_path = self.tmp / f"{name}.log"
        log = log_path.open("ab")  # a restart under the same name appends
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=log)
        self._running.append((name, proc, log))
        if log_path not in self.logs:
            self.logs.append(log_path)
        return log_path, proc

    def sim(
        self,
        name: str = "sim",
        *,
        latency_ms: float = 0.0,
        daily_limit: int | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> Sim:
        """Start a simulator (call ``wait_ready`` before using it); ``args`` are more
        ``marveld sim`` options, ``env`` more environment variables."""
        port = free_port()
        command = [*MARVELD, "sim", "--port", str(port), "--latency-ms", str(latency_ms)]
        if daily_limit is not None:
            command += ["--daily-limit", str(daily_limit)]
        command += args
        log, proc = self._spawn(name, command, {**os.environ, **SECRETS, **(env or {})})
        self._pending.append(f"http://127.0.0.1:{port}/_sim/stats")
        return Sim(name, port, latency_ms, proc, log)

    def daemon(
        self,
        sim: Sim,
        name: str = "daemon",
        *,
        grpc_port: int | None = None,
        http_port: int | None = None,
        env: Mapping[str, str] | None = None,
        **settings: str,
    ) -> Daemon:
        """Start a daemon with ``sim`` as its upstream; ``settings`` and ``env`` are
        environment variables (``MARVELD_CACHE_MEMORY_ENTRIES="0"``) over
        ``DAEMON_SETTINGS``. A daemon started again under the same ``name`` opens the same
        database (a restart). It starts once ``sim`` answers, so that its first sync does
        not meet (and log) refused connections."""
        if (sim_ready := f"{sim.base_url}/_sim/stats") in self._pending:
            wait_until_up(sim_ready, SIM_READY_SECONDS, self._check_alive)
            self._pending.remove(sim_ready)
        grpc_port = grpc_port or free_port()
        http_port = http_port or free_port()
        env = {
            **os.environ,
            **SECRETS,
            **DAEMON_SETTINGS,
            "MARVELD_GRPC_LISTEN": f"127.0.0.1:{grpc_port}",
            "MARVELD_HTTP_LISTEN": f"127.0.0.1:{http_port}",
            "MARVELD_DATABASE_PATH": str(self.tmp / f"{name}.db"),
            "MARVELD_UPSTREAM_URL": sim.api_url,
            **(env or {}),
            **settings,
        }
        if "MARVELD_DATABASE_URL" in env:  # PostgreSQL: no SQLite path beside it
            del env["MARVELD_DATABASE_PATH"]
        log, proc = self._spawn(name, [*MARVELD, "serve", "--config", str(self._config)], env)
        self._pending.append(f"http://127.0.0.1:{http_port}/healthz")
        return Daemon(name, grpc_port, http_port, proc, log)

    def wait_ready(self, seconds: float = 30.0) -> None:
        """Wait until every process started since the last call answers over HTTP."""
        for url in self._pending:
            wait_until_up(url, seconds, self._check_alive)
        self._pending.clear()

    def _check_alive(self) -> None:
        for name, proc, _ in self._running:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with status {proc.returncode} before it was ready; "
                    f"its log: {self.tmp / name}.log"
                )

    def kill(self, proc: Popen) -> None:
        """SIGKILL ``proc`` (a crash: no clean-up runs) and forget it."""
        proc.kill()
        proc.wait(STOP_SECONDS)
        self._forget(proc)

    def terminate(self, proc: Popen, seconds: float = STOP_SECONDS) -> int:
        """SIGTERM ``proc``, wait up to ``seconds`` for it, forget it; its exit status."""
        proc.terminate()
        status = proc.wait(seconds)
        self._forget(proc)
        return status

    def _forget(self, proc: Popen) -> None:
        for entry in self._running:
            if entry[1] is proc:
                self._running.remove(entry)
                entry[2].close()
                return

    def stop(self) -> None:
        """Terminate every process, newest first, and wait for each; note in ``exits``
        each one that had died before, did not stop in time, or ended with a status."""
        while self._running:
            name, proc, log = self._running.pop()
            if proc.poll() is not None:
                self.exits[name] = f"had exited with status {proc.returncode} before the end"
            else:
                proc.terminate()
                try:
                    proc.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(STOP_SECONDS)
                    self.exits[name] = f"ignored SIGTERM for {STOP_SECONDS:g}s: killed"
                if proc.returncode != 0 and name not in self.exits:
                    self.exits[name] = f"exited with status {proc.returncode} on SIGTERM"
            log.close()

    def problems(self) -> dict[str, list[str]]:
        """What each process logged above info level (JSON lines with level warning or
        worse, and anything that is not a JSON log line, e.g. a traceback), and how it
        ended if not cleanly, by process. Call it after ``stop``."""
        found: dict[str, list[str]] = {}
        for path in self.logs:
            lines = [
                line
                for line in path.read_text(errors="replace").splitlines()
                if line.strip() and not _routine(line)
            ]
            if path.stem in self.exits:
                lines.append(self.exits[path.stem])
            if lines:
                found[path.stem] = lines
        return found


SUBSCRIBERS = 'marveld_notification_subscribers{channel="grpc"}'
MEMORY_TIER = 'marveld_cache_entries{tier="memory"}'


def gauges(daemon: Daemon, *samples: str) -> list[float]:
    """Samples of the daemon's /metrics, read once (0 when absent, -1 when it does not
    answer)."""
    try:
        # Connection: close, or the daemon would hold this one-shot client's socket until
        # its keep-alive timeout, and fd figures would count the harness.
        url = f"http://127.0.0.1:{daemon.http_port}/metrics"
        text = httpx.get(url, headers={"Connection": "close"}, timeout=TIMEOUT).text
    except httpx.HTTPError:
        return [-1.0] * len(samples)
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] not in "#")
    return [float(values.get(sample, 0.0)) for sample in samples]


def memory_kib(pid: int) -> dict[str, int]:
    """The memory figures of /proc/<pid>/status (VmRSS, VmSize, ...), in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.endswith(" kB"):
            out[name] = int(value.split()[0])
    return out


def rss_kib(pid: int) -> int:
    return memory_kib(pid)["VmRSS"]


def log_record(line: str) -> dict[str, Any] | None:
    """A JSON log line as its record, or None for anything else (e.g. a bare traceback)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _routine(line: str) -> bool:
    """True for a JSON log line at info or debug level."""
    record = log_record(line)
    return record is not None and record.get("level") in ("debug", "info")


@contextmanager
def processes() -> Iterator[Processes]:
    """A ``Processes`` in a fresh temp dir; everything it started is stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="marveld-bench-") as tmp:
        started = Processes(Path(tmp))
        try:
            yield started
        except BaseException:
            started.stop()
            for path in started.logs:  # the temp dir goes: show what the processes said
                tail = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                print(f"--- {path.name}", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            started.stop()


@contextmanager
def live_daemon() -> Iterator[int]:
    """``marveld sim`` and ``marveld serve`` in subprocesses; yields the gRPC port."""
    with processes() as procs:
        daemon = procs.daemon(procs.sim())
        procs.wait_ready()
        yield daemon.grpc_port


async def login(channel: Channel, name: str = "Bench") -> dict[str, str]:
    """Register a user and log in; the metadata that authenticates later calls."""
    email = f"{name.lower()}@example.com"
    auth = pb.AuthServiceStub(channel)
    await auth.register(
        pb.RegisterRequest(name=name, email=email, password="bench password"), timeout=TIMEOUT
    )
    token = await auth.login(
        pb.LoginRequest(email=email, password="bench password"), timeout=TIMEOUT
    )
    return {"authorization": f"Bearer {token.access_token}"}


def percentile(ordered: list[float], fraction: float) -> float:
    """The value at ``fraction`` (0..1) of already sorted samples (nearest rank below)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "calls": len(ordered),
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": percentile(ordered, 0.99) * 1000,
    }
