"""``make cluster``: marveld as it is deployed, on this machine, for trying it out.

    python -m tools.cluster up|down|status|clean [--dir .cluster] [--ports-from BASE]
                                                 [--database-url URL] [--haproxy PATH]
                                                 [--haproxy-config PATH]

``up`` starts, in this order, PostgreSQL (tests/postgres.py; its data stays in DIR),
``marveld sim`` as the upstream, three ``marveld serve`` replicas (r1, r2, r3) on that
database, and HAProxy (config/haproxy.cfg) in front of them. Each runs detached, in a
session of its own, with a pid file and a log in DIR. ``up`` returns once every replica
answers /readyz and HAProxy counts its six servers UP, and prints the addresses to use;
when a part does not start, it prints that part's log tail and stops what it started.

``down`` stops everything and keeps DIR: the replicas get SIGTERM and drain (SIGKILL after
STOP_SECONDS), then HAProxy, the simulator and PostgreSQL stop. The next ``up`` finds the
users, the cache and the events where they were. ``clean`` is ``down``, then DIR removed.

DIR holds:
  cluster.json   the ports (and --database-url) of the first ``up``; later ones reuse them
  marveld.toml   the replicas' settings file, empty (the defaults): edit it, down, up
  secrets/       made once, mode 0600, never printed: the Marvel keys (the simulator's and
                 the replicas'), the JWT and webhook secrets; given as <NAME>_FILE
  postgres/      the PostgreSQL cluster: data/ and server.log. Like the tests' clusters it
                 runs with fsync off: a stop keeps everything, a power cut may not.
  logs/          sim.log, r1.log ... r3.log, haproxy.log
  run/           pid files

Everything listens on 127.0.0.1 only. Default ports: HAProxy gRPC 50050, HTTP 8080, stats
8404; the replicas 50051-50053 (gRPC) and 8081-8083 (HTTP); the simulator 8089 and
PostgreSQL 55432. ``--ports-from BASE`` takes PORT_BLOCK ports from BASE on instead (see
:meth:`Ports.from_base`). ``--database-url`` uses that PostgreSQL instead of starting one.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from secrets import token_urlsafe
from typing import IO, Any

import psycopg

from tests import postgres

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CONFIG = ROOT / "config" / "haproxy.cfg"
DEFAULT_DIR = Path(".cluster")
HOST = "127.0.0.1"
REPLICAS = ("r1", "r2", "r3")
BACKENDS = ("marveld_grpc", "marveld_http")  # config/haproxy.cfg
DATABASE = "marveld"
PORT_BLOCK = 11  # the ports --ports-from BASE takes
START_SECONDS = 60.0  # from a part's start to serving (the first up also migrates)
STOP_SECONDS = 30.0  # a replica's drain (drain_delay, then shutdown.grace); then SIGKILL
QUICK_STOP_SECONDS = 10.0  # HAProxy and the simulator
POLL_SECONDS = 0.2
PROBE_SECONDS = 2.0  # one HTTP request to a part
LOG_TAIL_LINES = 30
# HAProxy takes a replica out within 1.25 s of its first failed check (config/haproxy.cfg):
# a stopping replica stays not ready, but serving, this long before it stops taking calls
# (as config/marveld@.service sets it).
DRAIN_DELAY = "3s"
SECRETS = (
    "MARVEL_PUBLIC_KEY",
    "MARVEL_PRIVATE_KEY",
    "MARVELD_JWT_SECRET",
    "MARVELD_WEBHOOK_SECRET",
)
# Not passed on from the caller's environment: the cluster's parts get only what it sets.
NOT_INHERITED = ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# config/haproxy.cfg's maxconn (4,000) needs twice as many descriptors and some: where the
# limit is lower, HAProxy refuses to start. Here it gets what the limit allows (-n).
HAPROXY_MAXCONN = 4_000
HAPROXY_FD_MARGIN = 100
EXAMPLE_EMAIL = "ada@example.com"
EXAMPLE_PASSWORD = "correct horse battery"


class StartFailed(Exception):
    """A part did not start: ``what`` it is, why, and the log that tells more."""

    def __init__(self, what: str, reason: str, log: Path | None = None) -> None:
        super().__init__(f"{what} did not start: {reason}")
        self.what, self.reason, self.log = what, reason, log


@dataclass(frozen=True)
class Ports:
    """Every port of the cluster, all on 127.0.0.1."""

    lb_grpc: int = 50050
    lb_http: int = 8080
    lb_stats: int = 8404
    grpc: tuple[int, ...] = (50051, 50052, 50053)
    http: tuple[int, ...] = (8081, 8082, 8083)
    sim: int = 8089
    postgres: int = 55432

    @classmethod
    def from_base(cls, base: int) -> Ports:
        """BASE: HAProxy gRPC, +1..+3 the replicas' gRPC, +4 HAProxy HTTP, +5..+7 the
        replicas' HTTP, +8 HAProxy stats, +9 the simulator, +10 PostgreSQL."""
        if not 1024 <= base <= 65535 - PORT_BLOCK:
            raise ValueError(f"--ports-from must be 1024..{65535 - PORT_BLOCK}, not {base}")
        return cls(
            lb_grpc=base,
            grpc=(base + 1, base + 2, base + 3),
            lb_http=base + 4,
            http=(base + 5, base + 6, base + 7),
            lb_stats=base + 8,
            sim=base + 9,
            postgres=base + 10,
        )

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Ports:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        return cls(**fields)

    def named(self, *, with_postgres: bool) -> list[tuple[str, int]]:
        names = [
            ("HAProxy gRPC", self.lb_grpc),
            ("HAProxy HTTP", self.lb_http),
            ("HAProxy stats", self.lb_stats),
            *((f"{name} gRPC", port) for name, port in zip(REPLICAS, self.grpc, strict=True)),
            *((f"{name} HTTP", port) for name, port in zip(REPLICAS, self.http, strict=True)),
            ("the simulator", self.sim),
        ]
        return [*names, ("PostgreSQL", self.postgres)] if with_postgres else names


@dataclass(frozen=True)
class Layout:
    """Where everything of the cluster in ``root`` lives."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "cluster.json"

    @property
    def config(self) -> Path:
        return self.root / "marveld.toml"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def postgres(self) -> Path:
        return self.root / "postgres"

    @property
    def postgres_log(self) -> Path:
        return self.postgres / "server.log"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.root / "run" / f"{name}.pid"


@dataclass(frozen=True)
class Saved:
    """What the first ``up`` chose, kept in cluster.json for the ones after it."""

    ports: Ports
    database_url: str | None  # None: the PostgreSQL in DIR/postgres

    @classmethod
    def load(cls, layout: Layout) -> Saved | None:
        if not layout.state.exists():
            return None
        raw = json.loads(layout.state.read_text())
        return cls(Ports.from_json(raw["ports"]), raw.get("database_url"))

    def save(self, layout: Layout) -> None:
        layout.state.write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class Daemon:
    """A part the cluster starts: its pid file and log are named ``name``."""

    name: str
    what: str
    argv: list[str]
    env: dict[str, str]


# --- processes ----------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rpartition(")")[2].split()[0] not in ("Z", "X")


def pid_of(layout: Layout, name: str) -> int | None:
    """The running process of the part ``name``, by its pid file (checked to be one of the
    cluster's: a pid is reused once its process is gone)."""
    try:
        pid = int(layout.pidfile(name).read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    marker = b"haproxy" if name == "haproxy" else b"marveld"
    return pid if marker in command and alive(pid) else None


def postgres_pid(layout: Layout) -> int | None:
    try:
        pid = int((layout.postgres / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def spawn(layout: Layout, daemon: Daemon) -> subprocess.Popen[bytes]:
    """Start ``daemon`` detached: a session of its own, its output in its log."""
    log = layout.log(daemon.name)
    with log.open("ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting ---\n".encode())
        out.flush()
        proc = subprocess.Popen(
            daemon.argv,
            env=daemon.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    layout.pidfile(daemon.name).write_text(f"{proc.pid}\n")
    return proc


def stop(pids: dict[str, int], seconds: float) -> list[str]:
    """SIGTERM to each, then wait; SIGKILL for those still running after ``seconds``.
    Returns the names of the ones that had to be killed."""
    for pid in pids.values():
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    killed = [name for name, pid in pids.items() if alive(pid)]
    for name in killed:
        _signal(pids[name], signal.SIGKILL)
    return killed


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, signum)


def port_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:``port`` now (as servers do, SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def find_haproxy(chosen: str | None) -> str | None:
    """HAProxy's program: ``--haproxy``, else on PATH, else Debian's /usr/sbin/haproxy
    (not on the PATH of every user)."""
    if chosen is not None:
        return chosen if Path(chosen).is_file() and os.access(chosen, os.X_OK) else None
    found = shutil.which("haproxy")
    if found is None and os.access("/usr/sbin/haproxy", os.X_OK):
        found = "/usr/sbin/haproxy"
    return found


def haproxy_maxconn() -> int:
    """The most connections HAProxy may take under our descriptor limit, raised first to
    its hard limit (children inherit it: the replicas too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return HAPROXY_MAXCONN
    return max(1, min(HAPROXY_MAXCONN, (soft - HAPROXY_FD_MARGIN) // 2))


def haproxy_command(program: str, config: Path) -> list[str]:
    return [program, "-n", str(haproxy_maxconn()), "-f", str(config)]


# --- readiness ----------------------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def http_get(url: str) -> tuple[int, str] | None:
    """The status and body of GET ``url``; None when nothing answers."""
    try:
        with _OPENER.open(url, timeout=PROBE_SECONDS) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, ""
    except (OSError, http.client.HTTPException):
        return None


def haproxy_servers(stats_port: int) -> dict[str, str]:
    """``backend/server`` -> the status and the last check's (``UP L7OK``, ``DOWN L7TOUT``)
    of each replica, from HAProxy's stats."""
    got = http_get(f"http://{HOST}:{stats_port}/stats;csv")
    if got is None or got[0] != 200:
        return {}
    lines = got[1].splitlines()
    if not lines:
        return {}
    rows = csv.DictReader([lines[0].lstrip("# "), *lines[1:]])
    return {
        f"{row['pxname']}/{row['svname']}": f"{row['status']} {row['check_status']}".strip()
        for row in rows
        if row.get("pxname") in BACKENDS and row.get("svname") in REPLICAS
    }


def all_up(stats_port: int) -> bool:
    """Whether HAProxy has every replica UP in both backends, by a health check that
    passed (before its first check, HAProxy counts a server UP)."""
    servers = haproxy_servers(stats_port)
    count = len(BACKENDS) * len(REPLICAS)
    return len(servers) == count and set(servers.values()) == {"UP L7OK"}


def port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def wait_serving(
    what: str, proc: subprocess.Popen[bytes], log: Path, check: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not check():
        if (code := proc.poll()) is not None:
            raise StartFailed(what, f"it exited with status {code}", log)
        if time.monotonic() > deadline:
            raise StartFailed(what, f"not serving after {START_SECONDS:g} s", log)
        time.sleep(POLL_SECONDS)


# --- the parts ----------------------------------------------------------------------------


def inherited_env() -> dict[str, str]:
    """The caller's environment without marveld's settings and secrets, nor systemd's."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MARVEL_", "MARVELD_")) and name not in NOT_INHERITED
    }


def secret_files(layout: Layout) -> dict[str, str]:
    """``<NAME>_FILE`` for each secret; the files are made at the first ``up``."""
    layout.secrets.mkdir(mode=0o700, exist_ok=True)
    layout.secrets.chmod(0o700)
    files = {}
    for name in SECRETS:
        path = layout.secrets / name.lower()
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(token_urlsafe(32))
        files[f"{name}_FILE"] = str(path)
    return files


def haproxy_env(ports: Ports) -> dict[str, str]:
    """The variables config/haproxy.cfg reads its addresses from."""
    env = {
        "MARVELD_LB_GRPC": f"{HOST}:{ports.lb_grpc}",
        "MARVELD_LB_HTTP": f"{HOST}:{ports.lb_http}",
        "MARVELD_LB_STATS": f"{HOST}:{ports.lb_stats}",
    }
    for i, (grpc, http_port) in enumerate(zip(ports.grpc, ports.http, strict=True), 1):
        env[f"MARVELD_R{i}_GRPC"] = f"{HOST}:{grpc}"
        env[f"MARVELD_R{i}_HTTP"] = f"{HOST}:{http_port}"
        env[f"MARVELD_R{i}_HTTP_PORT"] = str(http_port)
    return {**inherited_env(), **env}


def sim_daemon(ports: Ports, secrets: dict[str, str]) -> Daemon:
    webhooks = f"http://{HOST}:{ports.lb_http}/v1/webhooks/marvel"  # through HAProxy
    argv = ["sim", "--host", HOST, "--port", str(ports.sim), "--webhook-url", webhooks]
    return Daemon(
        "sim",
        "the simulator (marveld sim)",
        [sys.executable, "-m", "marveld", *argv],
        {**inherited_env(), **secrets},
    )


def replica_daemon(
    layout: Layout, ports: Ports, i: int, database_url: str, secrets: dict[str, str]
) -> Daemon:
    name = REPLICAS[i]
    env = {
        "MARVELD_GRPC_LISTEN": f"{HOST}:{ports.grpc[i]}",
        "MARVELD_HTTP_LISTEN": f"{HOST}:{ports.http[i]}",
        "MARVELD_DATABASE_URL": database_url,
        "MARVELD_REPLICA_ID": name,
        "MARVELD_UPSTREAM_URL": f"http://{HOST}:{ports.sim}/v1/public",
        "MARVELD_SHUTDOWN_DRAIN_DELAY": DRAIN_DELAY,
        "MARVELD_LOG_FORMAT": "text",
    }
    return Daemon(
        name,
        f"replica {name}",
        [sys.executable, "-m", "marveld", "serve", "--config", str(layout.config)],
        {**inherited_env(), **secrets, **env},
    )


def start_postgres(layout: Layout, port: int) -> str:
    """PostgreSQL on its data in DIR/postgres (made the first time), with a database
    ``marveld``; returns that database's URL."""
    try:
        user = postgres._server_user()
        if user is not None:  # root: the server runs as postgres, which must reach DIR
            for parent in layout.postgres.parents:
                if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
                    raise postgres.Unavailable(
                        f"it runs as the {user.pw_name} user, who may not enter {parent} "
                        f"(chmod o+x {parent}, or choose a --dir it may reach)"
                    )
        server = postgres.Cluster.reuse(layout.postgres, port)
    except postgres.Unavailable as exc:
        raise StartFailed("PostgreSQL", str(exc), layout.postgres_log) from None
    with psycopg.connect(server.url, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            return postgres.with_database(server.url, DATABASE)
        conn.execute(f"CREATE DATABASE {DATABASE}")
    return postgres.with_database(server.url, DATABASE)


# --- the commands -------------------------------------------------------------------------


def log_tail(log: Path) -> list[str]:
    """The last lines of ``log``, without HAProxy's lines about our own stats requests."""
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if "GET /stats;csv " not in line][-LOG_TAIL_LINES:]


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def say(line: str = "", *, to: IO[str] = sys.stdout) -> None:
    print(line, file=to, flush=True)


def running(layout: Layout, saved: Saved | None) -> dict[str, int]:
    """The parts of the cluster in ``layout`` that run now, name -> pid."""
    names = ["sim", *REPLICAS, "haproxy"]
    found = {name: pid for name in names if (pid := pid_of(layout, name)) is not None}
    if (saved is None or saved.database_url is None) and (pid := postgres_pid(layout)):
        found["postgres"] = pid
    return found


def expected(saved: Saved) -> int:
    return 5 + (saved.database_url is None)  # sim, three replicas, HAProxy (, PostgreSQL)


def preflight(args: argparse.Namespace, layout: Layout) -> tuple[Saved, list[str]] | int:
    """What ``up`` checks before it starts anything: HAProxy is there and takes its config,
    nothing of the cluster runs, every port is free. Returns the settings and HAProxy's
    command, or the exit status after saying what is wrong."""
    program = find_haproxy(args.haproxy)
    if program is None:
        where = f" at {args.haproxy}" if args.haproxy else ""
        say(
            f"cluster: HAProxy is not installed{where} (Debian: apt-get install haproxy); "
            "nothing was started",
            to=sys.stderr,
        )
        return 1
    before = Saved.load(layout)
    try:
        ports = Ports.from_base(args.ports_from) if args.ports_from else None
    except ValueError as exc:
        say(f"cluster: {exc}", to=sys.stderr)
        return 2
    saved = Saved(
        ports or (before.ports if before else Ports()),
        args.database_url or (before.database_url if before else None),
    )
    if now := running(layout, before):
        if before is not None and len(now) == expected(before):
            say(f"cluster: already running in {shown(layout.root)}")
            addresses(layout, before, args.dir)
            return 0
        say(
            f"cluster: partly running in {shown(layout.root)} ({', '.join(now)}): "
            f"stop it first ({stop_command(args.dir)})",
            to=sys.stderr,
        )
        return 1
    busy = [
        (what, port)
        for what, port in saved.ports.named(with_postgres=saved.database_url is None)
        if not port_free(port)
    ]
    for what, port in busy:
        say(f"cluster: port {port} ({what}) is in use", to=sys.stderr)
    if busy:
        say("cluster: free it, or choose other ports with --ports-from BASE", to=sys.stderr)
        return 1
    haproxy = haproxy_command(program, args.haproxy_config)
    checked = subprocess.run(
        [*haproxy, "-c"],
        env=haproxy_env(saved.ports),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if checked.returncode != 0:
        say(f"cluster: HAProxy refuses {shown(args.haproxy_config)}:", to=sys.stderr)
        say((checked.stderr or checked.stdout).strip(), to=sys.stderr)
        return 1
    return saved, haproxy


def up(args: argparse.Namespace) -> int:
    layout = Layout(args.dir.resolve())
    checked = preflight(args, layout)
    if isinstance(checked, int):
        return checked
    saved, haproxy = checked
    if not layout.root.exists():
        layout.root.mkdir(parents=True)
        layout.root.chmod(0o755)  # PostgreSQL's user (as root: postgres) enters it
    for folder in (layout.log("x").parent, layout.pidfile("x").parent):
        folder.mkdir(exist_ok=True)
    layout.config.touch()
    saved.save(layout)
    secrets = secret_files(layout)
    try:
        start_all(layout, saved, haproxy, secrets)
    except StartFailed as exc:
        say(f"cluster: {exc}", to=sys.stderr)
        if exc.log is not None and exc.log.exists():
            say(f"--- the last lines of {shown(exc.log)} ---", to=sys.stderr)
            say("\n".join(log_tail(exc.log)), to=sys.stderr)
            say("---", to=sys.stderr)
        say("cluster: stopping what was started", to=sys.stderr)
        stop_all(layout, saved)
        return 1
    except BaseException:
        stop_all(layout, saved)
        raise
    say()
    addresses(layout, saved, args.dir)
    return 0


def start_all(layout: Layout, saved: Saved, haproxy: list[str], secrets: dict[str, str]) -> None:
    """Each part in turn, each serving before the next starts (the replicas together)."""
    ports = saved.ports
    database_url = saved.database_url
    if database_url is None:
        say(f"starting PostgreSQL on port {ports.postgres} (data in {shown(layout.postgres)})")
        database_url = start_postgres(layout, ports.postgres)
    sim = sim_daemon(ports, secrets)
    say(f"starting {sim.what} on port {ports.sim}")
    proc = spawn(layout, sim)
    wait_serving(sim.what, proc, layout.log(sim.name), lambda: port_open(ports.sim))

    replicas = [replica_daemon(layout, ports, i, database_url, secrets) for i in range(3)]
    say(f"starting replicas {', '.join(REPLICAS)}")
    procs = [spawn(layout, replica) for replica in replicas]  # together: they migrate in turn
    for replica, proc, port in zip(replicas, procs, ports.http, strict=True):

        def ready(port: int = port) -> bool:
            return (http_get(f"http://{HOST}:{port}/readyz") or (0, ""))[0] == 200

        wait_serving(replica.what, proc, layout.log(replica.name), ready)

    lb = Daemon("haproxy", "HAProxy", [*haproxy, "-db"], haproxy_env(ports))
    say(f"starting HAProxy on ports {ports.lb_grpc} (gRPC) and {ports.lb_http} (HTTP)")
    proc = spawn(layout, lb)
    try:
        wait_serving(lb.what, proc, layout.log(lb.name), lambda: all_up(ports.lb_stats))
    except StartFailed as exc:
        servers = haproxy_servers(ports.lb_stats)
        seen = ", ".join(f"{name} {state}" for name, state in servers.items()) or "no stats"
        raise StartFailed(lb.what, f"{exc.reason}; its servers: {seen}", exc.log) from None


def stop_all(layout: Layout, saved: Saved | None) -> bool:
    """Replicas first (they drain), then HAProxy, the simulator, PostgreSQL. Returns
    whether all of it is stopped."""
    replicas = {name: pid for name in REPLICAS if (pid := pid_of(layout, name)) is not None}
    if replicas:
        say(f"stopping {', '.join(replicas)} (draining, at most {STOP_SECONDS:g} s)")
    killed = stop(replicas, STOP_SECONDS)
    for name in ("haproxy", "sim"):
        if (pid := pid_of(layout, name)) is not None:
            killed += stop({name: pid}, QUICK_STOP_SECONDS)
    for name in killed:
        say(f"cluster: {name} did not stop in time: killed", to=sys.stderr)
    for name in ("sim", *REPLICAS, "haproxy"):
        layout.pidfile(name).unlink(missing_ok=True)
    if (saved is None or saved.database_url is None) and postgres_pid(layout) is not None:
        say("stopping PostgreSQL")
        try:
            postgres.Cluster.at(layout.postgres).stop()
        except (OSError, ValueError, postgres.Unavailable) as exc:
            say(f"cluster: cannot stop PostgreSQL: {exc}", to=sys.stderr)
    left = running(layout, saved)
    for name, pid in left.items():
        say(f"cluster: {name} (pid {pid}) still runs", to=sys.stderr)
    return not left


def down(args: argparse.Namespace) -> int:
    layout = Layout(args.dir.resolve())
    saved = Saved.load(layout)
    if saved is None:
        say(f"cluster: no cluster in {shown(layout.root)}: nothing to stop")
        return 0
    stopped = stop_all(layout, saved)
    if stopped:
        kept = shown(layout.root)
        say(f"stopped; the data is kept in {kept} ({clean_command(args.dir)} removes it)")
    return 0 if stopped else 1


def clean(args: argparse.Namespace) -> int:
    layout = Layout(args.dir.resolve())
    if not layout.root.exists():
        say(f"cluster: {shown(layout.root)} does not exist: nothing to remove")
        return 0
    saved = Saved.load(layout)
    if saved is None:
        say(
            f"cluster: {shown(layout.root)} holds no cluster (no cluster.json): not removed",
            to=sys.stderr,
        )
        return 1
    if not stop_all(layout, saved):
        return 1
    shutil.rmtree(layout.root)
    say(f"removed {shown(layout.root)}")
    return 0


def status(args: argparse.Namespace) -> int:
    layout = Layout(args.dir.resolve())
    saved = Saved.load(layout)
    if saved is None:
        say(f"no cluster in {shown(layout.root)}")
        return 3
    now = running(layout, saved)
    parts = ["postgres"] if saved.database_url is None else []
    for name in [*parts, "sim", *REPLICAS, "haproxy"]:
        say(f"  {name:9} {f'running, pid {now[name]}' if name in now else 'stopped'}")
    if len(now) == expected(saved):
        say()
        addresses(layout, saved, args.dir)
        return 0
    return 3


def stop_command(folder: Path) -> str:
    if folder == DEFAULT_DIR:
        return "make cluster-down"
    return f"python -m tools.cluster down --dir {folder}"


def clean_command(folder: Path) -> str:
    if folder == DEFAULT_DIR:
        return "make cluster-clean"
    return f"python -m tools.cluster clean --dir {folder}"


def addresses(layout: Layout, saved: Saved, folder: Path) -> None:
    p = saved.ports
    database = saved.database_url or postgres.with_database(
        postgres.Cluster(layout.postgres, p.postgres).url, DATABASE
    )
    say(f"marveld cluster: three replicas behind HAProxy; data in {shown(layout.root)}")
    say(f"  gRPC      {HOST}:{p.lb_grpc}  (balanced call by call)")
    say(f"  HTTP      http://{HOST}:{p.lb_http}  (the JSON gateway, webhooks, WebSockets)")
    say(f"  stats     http://{HOST}:{p.lb_stats}/stats  (HAProxy's view of the replicas)")
    for name, grpc, http_port in zip(REPLICAS, p.grpc, p.http, strict=True):
        say(
            f"  {name}        grpc {HOST}:{grpc}  http http://{HOST}:{http_port}  "
            f"log {shown(layout.log(name))}"
        )
    sim_log = shown(layout.log("sim"))
    say(f"  upstream  http://{HOST}:{p.sim}/v1/public  (marveld sim)  log {sim_log}")
    log = f"  log {shown(layout.postgres_log)}" if saved.database_url is None else ""
    say(f"  database  {database}{log}")
    say(f"  HAProxy   log {shown(layout.log('haproxy'))}")
    say(f"  settings  {shown(layout.config)} (every replica's; down and up again to apply)")
    say()
    say("try it:")
    body = json.dumps({"name": "Ada", "email": EXAMPLE_EMAIL, "password": EXAMPLE_PASSWORD})
    say(
        f"  curl -s -X POST http://{HOST}:{p.lb_http}/v1/auth/register "
        f"-H 'content-type: application/json' -d '{body}'"
    )
    login = json.dumps({"email": EXAMPLE_EMAIL, "password": EXAMPLE_PASSWORD})
    say(f"  grpcurl -plaintext -d '{login}' {HOST}:{p.lb_grpc} marvel.v1.AuthService/Login")
    say(f"  .venv/bin/marveld client --server {HOST}:{p.lb_grpc} login --email {EXAMPLE_EMAIL}")
    say(f"  .venv/bin/marveld client --server {HOST}:{p.lb_grpc} characters --limit 5")
    say()
    say(f"stop it with: {stop_command(folder)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.cluster",
        description="A local marveld cluster: PostgreSQL, marveld sim, three replicas, HAProxy.",
    )
    parser.add_argument("command", choices=("up", "down", "status", "clean"))
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="the cluster's folder (default .cluster)"
    )
    parser.add_argument(
        "--ports-from",
        type=int,
        metavar="BASE",
        help=f"up: use the {PORT_BLOCK} ports from BASE on (kept for later ups)",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="up: this PostgreSQL database instead of one in DIR (kept for later ups)",
    )
    parser.add_argument(
        "--haproxy", metavar="PATH", help="up: HAProxy's program (default: on PATH)"
    )
    parser.add_argument(
        "--haproxy-config",
        type=Path,
        metavar="PATH",
        default=HAPROXY_CONFIG,
        help="up: HAProxy's config, with the variables of config/haproxy.cfg (the default)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"up": up, "down": down, "status": status, "clean": clean}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `status | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
