"""A throwaway PostgreSQL server for the tests: a cluster in a temp folder, on a free port.

The tests use the server named by ``MARVELD_TEST_POSTGRES_URL`` when it is set (a libpq
URL of a role that may create databases). Otherwise the test session starts its own:
``initdb`` and ``pg_ctl`` from ``MARVELD_TEST_POSTGRES_BIN``, ``pg_config --bindir`` or
``/usr/lib/postgresql/<version>/bin``, trust authentication on loopback only, durability
off (fsync, full_page_writes: a test cluster is thrown away). PostgreSQL refuses to run as
root, so as root the cluster belongs to, and runs as, the ``postgres`` user.

Where no server can be had the PostgreSQL tests skip with one line saying why; under CI
(``CI`` set) they fail instead: CI must run them.

``python -m tests.postgres start DIR`` starts a cluster in DIR and prints its URL (what
.ci/run does before the suite runs under the unit's system-call rules, which forbid
switching users); ``python -m tests.postgres stop DIR`` stops it. ``start-pair`` and
``stop-pair`` do the same for a primary and its streaming standby (the failover test's,
named to it by ``MARVELD_TEST_POSTGRES_PAIR``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from marveld.storage.postgres.schema import migrate

URL_VARIABLE = "MARVELD_TEST_POSTGRES_URL"
PAIR_VARIABLE = "MARVELD_TEST_POSTGRES_PAIR"  # a folder where start-pair ran
BIN_VARIABLE = "MARVELD_TEST_POSTGRES_BIN"
SERVER_USER = "postgres"  # who runs the server when the tests run as root
ROLE = "marveld_test"
START_SECONDS = 60


class Unavailable(Exception):
    """No PostgreSQL server can be had here; the message says why."""


def bindir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``."""
    if chosen := os.environ.get(BIN_VARIABLE):
        return Path(chosen)
    if pg_config := shutil.which("pg_config"):
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if found.returncode == 0 and (Path(found.stdout.strip()) / "initdb").exists():
            return Path(found.stdout.strip())
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    raise Unavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl): install postgresql, or set "
        f"{BIN_VARIABLE} to their folder, or {URL_VARIABLE} to a server's URL"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Cluster:
    """A cluster in ``folder`` (data/, the socket, the log), serving on ``port``."""

    folder: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @classmethod
    def start(cls, folder: Path, port: int | None = None) -> Cluster:
        """initdb, then pg_ctl start on ``port`` (default: a free one); returns once the
        server accepts connections."""
        binaries = bindir()
        user = _server_user()
        folder.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chown(folder, user.pw_uid, user.pw_gid)
        cluster = cls(folder, port or _free_port())
        _run(
            user,
            [
                str(binaries / "initdb"),
                "--pgdata",
                str(cluster.data),
                "--username",
                ROLE,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C.UTF-8",
                "--no-sync",
            ],
        )
        cluster.restart()
        return cluster

    @classmethod
    def reuse(cls, folder: Path, port: int | None = None) -> Cluster:
        """The cluster in ``folder`` started again on the data it kept (``start`` the first
        time, when ``folder`` holds none): what ``make cluster`` runs on."""
        if not (folder / "data" / "PG_VERSION").exists():
            return cls.start(folder, port)
        cluster = cls(folder, port or _free_port())
        cluster.restart()
        return cluster

    def stop(self) -> None:
        """pg_ctl stop, fast mode (connections are cut, the server exits)."""
        _run(
            _server_user(),
            [str(bindir() / "pg_ctl"), "stop", "--pgdata", str(self.data), "--mode", "fast"],
            check=False,
        )

    def restart(self) -> None:
        """pg_ctl start (the cluster is initialised): returns once it accepts connections."""
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.folder}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=300",
                "-c shared_buffers=64MB",
            ]
        )
        _run(
            _server_user(),
            [
                str(bindir() / "pg_ctl"),
                "start",
                "--pgdata",
                str(self.data),
                "--log",
                str(self.log),
                "--wait",
                f"--timeout={START_SECONDS}",
                "-o",
                options,
            ],
        )

    @classmethod
    def standby_of(cls, primary: Cluster, folder: Path) -> Cluster:
        """A hot standby of ``primary`` in ``folder``, streaming from it: pg_basebackup -R
        (which writes primary_conninfo and standby.signal), then started on a port of its
        own; returns once it accepts (read-only) connections."""
        user = _server_user()
        folder.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chown(folder, user.pw_uid, user.pw_gid)
        standby = cls(folder, _free_port())
        _run(
            user,
            [
                str(bindir() / "pg_basebackup"),
                f"--dbname=host=127.0.0.1 port={primary.port} user={ROLE}",
                "--pgdata",
                str(standby.data),
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
        )
        standby.restart()
        return standby

    @property
    def pid(self) -> int:
        """The postmaster's process id (the first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def crash(self) -> None:
        """Stop the server at once, as a lost host would: SIGQUIT to the postmaster
        (immediate shutdown: no checkpoint, every connection cut). A signal, not pg_ctl:
        root may send it without switching users."""
        os.kill(self.pid, signal.SIGQUIT)

    def promote(self) -> None:
        """Make this standby the primary (``pg_promote``, over SQL: no switching users);
        returns once it accepts writes."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_promote(true, %s)", (START_SECONDS,)).fetchone()
        if row != (True,):
            raise Unavailable(f"the standby on port {self.port} was not promoted")

    @classmethod
    def at(cls, folder: Path) -> Cluster:
        """The cluster started earlier in ``folder`` (its port is in postmaster.pid)."""
        lines = (folder / "data" / "postmaster.pid").read_text().splitlines()
        return cls(folder, int(lines[3]))


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as: ours, or ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise Unavailable(
            f"running as root, and PostgreSQL refuses root: there is no {SERVER_USER!r} "
            f"user to run it as (set {URL_VARIABLE} to a server's URL)"
        ) from None


def _run(user: pwd.struct_passwd | None, args: list[str], *, check: bool = True) -> None:
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
        cwd="/",
    )
    if check and done.returncode != 0:
        raise Unavailable(
            f"{Path(args[0]).name} failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-600:]}"
        )


def start_pair(folder: Path) -> tuple[Cluster, Cluster]:
    """A primary in ``folder``/primary and its streaming standby in ``folder``/standby."""
    primary = Cluster.start(folder / "primary")
    try:
        return primary, Cluster.standby_of(primary, folder / "standby")
    except BaseException:
        primary.stop()
        raise


def pair_at(folder: Path) -> tuple[Cluster, Cluster]:
    """The pair ``start_pair`` started in ``folder``."""
    return Cluster.at(folder / "primary"), Cluster.at(folder / "standby")


def stop_pair(folder: Path) -> None:
    for part in ("primary", "standby"):
        if (folder / part / "data" / "postmaster.pid").exists():
            Cluster.at(folder / part).stop()


USAGE = "usage: python -m tests.postgres start|stop|start-pair|stop-pair DIR"


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in ("start", "stop", "start-pair", "stop-pair"):
        sys.exit(USAGE)
    folder = Path(argv[1]).resolve()
    try:
        if argv[0] == "start":
            print(Cluster.start(folder).url)
        elif argv[0] == "stop":
            Cluster.at(folder).stop()
        elif argv[0] == "start-pair":
            start_pair(folder)
            print(folder)
        else:
            stop_pair(folder)
    except Unavailable as exc:
        sys.exit(f"tests.postgres: {exc}")


if __name__ == "__main__":
    main(sys.argv[1:])


TEMPLATE = "marveld_template"


def make_template(server_url: str) -> None:
    """A database at the latest schema for tests to clone (CREATE DATABASE ... TEMPLATE
    copies files: much faster than migrating each test's database)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    with psycopg.connect(with_database(server_url, TEMPLATE), autocommit=True) as conn:
        migrate(conn, name=TEMPLATE)


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
