"""The ``marveld`` command: argument parsing, logging set-up, ``trio.run``.

``marveld serve`` runs the daemon, ``marveld sim`` the Marvel-compatible simulator,
``marveld users grant-admin EMAIL`` makes an account an admin, ``marveld db copy`` moves a
SQLite database to PostgreSQL. In an IDE, run the module
``marveld`` with the arguments ``serve --demo``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import trio

from marveld import __version__, client, daemon, malloc, systemd
from marveld.config import ConfigError, Settings, load_settings, parse_setting
from marveld.correlation import CorrelationFilter, TextFormatter
from marveld.descriptors import ensure_descriptors
from marveld.domain.errors import CannotStart, InvalidArgument, NotFound
from marveld.domain.users import User, normalize_email
from marveld.sim import SimOptions, add_sim_arguments, options_from_args, run_sim
from marveld.storage import StorageError, Store

log = logging.getLogger("marveld")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marveld", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"marveld {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon")
    serve.add_argument(
        "--config", type=Path, default=None, help="settings file (default ./marveld.toml)"
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="throwaway secrets and an in-process simulator as the upstream: needs nothing set",
    )
    sim = commands.add_parser("sim", help="run the Marvel-compatible upstream simulator")
    add_sim_arguments(sim)
    users = commands.add_parser("users", help="manage accounts")
    user_commands = users.add_subparsers(dest="users_command", required=True)
    grant = user_commands.add_parser("grant-admin", help="make the account with EMAIL an admin")
    grant.add_argument("email", metavar="EMAIL")
    grant.add_argument(
        "--config", type=Path, default=None, help="settings file (default ./marveld.toml)"
    )
    db = commands.add_parser("db", help="manage the database")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    copy = db_commands.add_parser(
        "copy",
        help="copy a SQLite database into an empty PostgreSQL one",
        description=COPY_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    copy.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        metavar="PATH",
        help="the SQLite database file (database.path), opened read-only",
    )
    copy.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="URL",
        help="the PostgreSQL database (a libpq URL, as database.url: no password in it)",
    )
    copy.add_argument(
        "--config", type=Path, default=None, help="settings file (default ./marveld.toml)"
    )
    client.add_arguments(commands.add_parser("client", help="call a running marveld over gRPC"))
    return parser


COPY_DESCRIPTION = """\
Copy the SQLite database at PATH into the empty PostgreSQL database at URL, in one
transaction: users (password hashes, roles, deleted accounts), characters and their read
rows, the event log with the same sequence numbers, notification subscriptions and
notifications (their cursors unchanged), sync state (the notifier's position and the sync
checkpoints) and webhook deliveries. The cache is not copied: it refills from the upstream.

Stop marveld first. PATH is opened read-only and must be at this marveld's schema version
(start this marveld on it once to migrate it). URL is migrated, then must hold no users,
events or characters, else nothing is copied. The password is MARVELD_DATABASE_PASSWORD,
its _FILE form or the systemd credential, as for marveld serve (or libpq's PGPASSFILE).
After the copy, the row count of every table is checked against the source (a difference
rolls it all back) and printed.

Exit status: 0 copied; 1 refused or failed (nothing copied); 2 bad arguments or settings.
Then set database.url = URL (and unset database.path) and start marveld.
"""


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    environ = os.environ if env is None else env
    if args.command == "client":
        sys.exit(client.run(args, environ))
    if args.command == "sim":
        try:
            sim_options = options_from_args(args, environ)
        except ValueError as exc:
            print(f"marveld sim: {exc}", file=sys.stderr)
            sys.exit(2)
        _setup_logging("info")
        sys.exit(_run_or_explain(lambda: run_sim(sim_options)))
    if args.command == "users":
        sys.exit(grant_admin(args.email, args.config, environ))
    if args.command == "db":
        sys.exit(copy_database(args.source, args.target, args.config, environ))
    try:
        settings = load_settings(args.config, environ, demo=args.demo)
    except ConfigError as exc:
        print(f"marveld: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    replica = settings.replica.replica_id(settings.grpc.listen.port)
    # With PostgreSQL several replicas may run: each line says which one wrote it.
    _setup_logging(
        settings.log.level, settings.log.format, replica if settings.database.url else None
    )
    malloc.limit_arenas(environ)  # before trio starts its worker threads
    ensure_descriptors(settings.grpc.max_connections + settings.http.max_connections)
    notifier = systemd.Notifier.from_env(environ)
    run = partial(serve, settings, demo=args.demo, notifier=notifier)
    sys.exit(_run_or_explain(run, notifier, graceful=True))


async def serve(
    settings: Settings,
    *,
    demo: bool = False,
    notifier: systemd.Notifier | None = None,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[daemon.Endpoints] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The daemon; with ``demo`` a simulator on a free port is its upstream, and sends its
    webhooks to the daemon. Set ``stop`` for a graceful stop; this returns after it."""
    async with trio.open_nursery() as nursery:
        handle = None
        if demo:
            handle = await nursery.start(
                run_sim,
                SimOptions(
                    public_key=settings.secrets.marvel_public_key,
                    private_key=settings.secrets.marvel_private_key,
                    webhook_secret=settings.secrets.webhook_secret,
                ),
            )
            settings = dataclasses.replace(
                settings, upstream=dataclasses.replace(settings.upstream, url=handle.url)
            )
            log.info("demo: the simulator at %s stands in for the Marvel API", handle.url)

        async def run_daemon(task_status: trio.TaskStatus[daemon.Endpoints]) -> None:
            await daemon.run(settings, notifier=notifier, stop=stop, task_status=task_status)
            nursery.cancel_scope.cancel()  # stopped gracefully: the simulator too

        endpoints = await nursery.start(run_daemon)
        if handle is not None and settings.secrets.webhook_secret:
            host = settings.http.listen.host
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            host = f"[{host}]" if ":" in host else host
            handle.state.webhook_url = f"http://{host}:{endpoints.http_port}/v1/webhooks/marvel"
            log.info("demo: the simulator sends its webhooks to %s", handle.state.webhook_url)
        task_status.started(endpoints)


def grant_admin(email: str, config: Path | None, env: Mapping[str, str]) -> int:
    """``marveld users grant-admin``: one line out, exit status 0, or one line on stderr and 2."""

    def fail(message: str) -> int:
        print(f"marveld users grant-admin: {message}", file=sys.stderr)
        return 2

    try:
        # demo=True gives any missing secret a throwaway value: this command reads none.
        settings = load_settings(config, env, demo=True)
        clean = normalize_email(email)
    except ConfigError as exc:
        return fail(f"configuration error: {exc}")
    except InvalidArgument:
        return fail(f"{email!r} is not an email address")
    db = settings.database
    if db.url is None and not db.path.exists():
        return fail(f"no database at {db.path} (database.path)")
    _setup_logging("warning")
    where = [str(db.path)]

    async def set_role() -> User:
        opened = Store.connect(
            path=db.path, url=db.url, password=settings.secrets.database_password, pool_size=1
        )
        async with opened as store:
            where[0] = store.name
            return await store.users.set_role(clean, "admin", datetime.now(UTC))

    try:
        user = trio.run(set_role)
    except NotFound:
        return fail(f"no user with email {clean} in {where[0]}")
    except StorageError as exc:
        return fail(str(exc))
    print(f"{user.email} is now an admin")
    return 0


def copy_database(source: Path, target: str, config: Path | None, env: Mapping[str, str]) -> int:
    """``marveld db copy``: the counts on stdout and exit status 0; or one line on stderr
    and 1 (refused or failed: nothing copied), 2 (bad settings)."""

    def fail(message: str, code: int = 1) -> int:
        print(f"marveld db copy: {message}", file=sys.stderr)
        return code

    try:
        # demo=True gives any missing secret a throwaway value: this command reads only
        # the database password, which may be missing (libpq may find one itself).
        settings = load_settings(config, env, demo=True)
        url = parse_setting("database.url", target, "--to")
    except ConfigError as exc:
        return fail(f"configuration error: {exc}", 2)
    if not isinstance(url, str):
        return fail("configuration error: --to: expected a postgresql:// URL, got none", 2)
    _setup_logging("warning")
    try:
        from marveld.storage.postgres.copy import copy_sqlite_to_postgres
    except ImportError as exc:
        return fail(f"PostgreSQL support is not installed ({exc}): pip install 'marveld[postgres]'")
    password = settings.secrets.database_password
    try:
        copied = trio.run(partial(copy_sqlite_to_postgres, source, url, password=password))
    except StorageError as exc:
        return fail(str(exc))
    print(f"copied {copied.source} to {copied.target}, in rows:")
    width = max(len(name) for name, _, _ in copied.counts)
    for name, before, after in copied.counts:
        print(f"  {name:<{width}}  {before} → {after}")
    print(f"not copied: {', '.join(copied.skipped)} (refills from the upstream)")
    print(f"the next event gets seq {copied.next_seq}")
    return 0


def _run_or_explain(
    start: Callable[..., Awaitable[None]],
    notifier: systemd.Notifier | None = None,
    *,
    graceful: bool = False,
) -> int:
    """:func:`_run_until_signal`; a failure its operator can fix (a port taken, a database
    that cannot be opened) is one log line and exit status 1, not a traceback."""
    try:
        return _run_until_signal(start, notifier, graceful=graceful)
    except Exception as exc:
        reason = _cannot_start(exc)
        if reason is None:
            raise
        log.error("cannot start: %s", reason)
        return 1


def _cannot_start(exc: BaseException) -> CannotStart | None:
    """The CannotStart a failed run came down to, when that is all it was (each nursery on
    the way up wrapped it in an exception group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, CannotStart) else None


def _run_until_signal(
    start: Callable[..., Awaitable[None]],
    notifier: systemd.Notifier | None = None,
    *,
    graceful: bool = False,
) -> int:
    """Run ``start()`` until SIGINT or SIGTERM; a signal is a clean stop (exit status 0).
    ``graceful``: ``start(stop=event)``; the first signal sets the event (a graceful stop,
    which ends when ``start`` returns), a second one stops at once."""

    async def runner() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                stop = trio.Event()

                async def wait_for_signal() -> None:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if notifier is not None:
                            notifier.stopping()
                        if graceful and not stop.is_set():
                            log.info("%s received, stopping gracefully (again: at once)", name)
                            stop.set()
                            continue
                        log.info("%s received, shutting down", name)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(wait_for_signal)
                await (start(stop=stop) if graceful else start())
                nursery.cancel_scope.cancel()

    trio.run(runner)
    log.info("stopped")
    return 0


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for journald and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if replica := getattr(record, "replica", None):
            entry["replica"] = replica
        if correlation_id := getattr(record, "correlation_id", None):
            entry["correlation_id"] = correlation_id
        entry.update(getattr(record, "fields", {}))  # a request line's method, status, ...
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _setup_logging(level: str, fmt: str = "auto", replica: str | None = None) -> None:
    """Readable lines on a terminal; JSON lines otherwise (or as ``log.format`` says).
    ``replica``: a name every line carries (``replica`` in JSON, after the level in text)."""
    handler = logging.StreamHandler(sys.stderr)
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    where = "" if replica is None else "%(replica)s "
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else TextFormatter(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s")
    )
    # Each request's lines carry its correlation id; each line the replica's name.
    handler.addFilter(CorrelationFilter(replica))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # httpx logs each request's URL at INFO, and Marvel's signature travels in the URL.
    logging.getLogger("httpx").setLevel(logging.WARNING)
