"""Connections to PostgreSQL: a bounded pool, used in trio worker threads.

psycopg's connections block, so every call runs in a worker thread
(``trio.to_thread.run_sync``), as sqlite3's do (``marveld/storage/database.py``). The pool
(psycopg-pool) holds at most ``pool_size`` connections; a trio ``CapacityLimiter`` of the
same size keeps threads from queueing inside the pool. Every connection is in autocommit
mode and each call of :meth:`PgDatabase.write` or ``read(snapshot=True)`` is one explicit
transaction, so a write commits or rolls back as a whole; as with SQLite, a thread is never
abandoned on cancellation.

The URL shown in logs and errors is :func:`redacted`: never a password.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import trio
from psycopg_pool import ConnectionPool, PoolTimeout

from marveld.storage.errors import CannotOpen, StorageError, Unreachable
from marveld.storage.postgres.schema import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_POOL_SIZE = 8
CONNECT_SECONDS = 10.0
POOL_WAIT_SECONDS = 5.0
POOL_LOG_SECONDS = 60.0
# A dedicated connection (LISTEN, a session lock) tells a dead peer within about 5 s.
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 3,
}


class OnePoolLinePerMinute(logging.Filter):
    """psycopg-pool warns at every failed connection attempt, each warning several lines
    long: 20 lines in the first 5 s of an outage with 8 connections. Let through one line
    (made one line) per :data:`POOL_LOG_SECONDS`, saying how many were held back; the
    daemon's own line (readiness: "the database is unreachable") says the rest."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._next = 0.0
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        if now < self._next:
            self._held += 1
            return False
        self._next = now + POOL_LOG_SECONDS
        message = " ".join(record.getMessage().split())
        if self._held:
            message += f" (and {self._held} more such lines held back)"
        record.msg, record.args, self._held = message, None, 0
        return True


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the user part or the query)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = urlencode(
        [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*"
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _open_pool(
    url: str, password: str | None, size: int, name: str, application: str
) -> tuple[ConnectionPool, int]:
    """Migrate on a first connection of our own (its error is the server's own words:
    refused, bad password, no such database; the pool would only retry until a timeout),
    then open the pool."""
    kwargs: dict[str, object] = {"autocommit": True, "application_name": application}
    if password is not None:
        kwargs["password"] = password
    first = psycopg.connect(
        url,
        autocommit=True,
        password=password,
        connect_timeout=int(CONNECT_SECONDS),
        application_name=application,
    )
    with first as conn:
        version = migrate(conn, name=name)
    # A call waits at most POOL_WAIT_SECONDS for a connection: past it the database is
    # reported unavailable (UNAVAILABLE, 503) rather than the call hanging. Connections are
    # checked as they leave the pool: one the server dropped is replaced, not handed out.
    pool = ConnectionPool(
        url,
        kwargs=kwargs,
        min_size=1,
        max_size=size,
        open=False,
        name="marveld",
        timeout=POOL_WAIT_SECONDS,
        check=ConnectionPool.check_connection,
    )
    try:
        pool.open(wait=True, timeout=CONNECT_SECONDS)
    except BaseException:
        pool.close()
        raise
    return pool, version


def _application(prefix: str, replica: str) -> str:
    """An ``application_name``: PostgreSQL keeps its first 63 bytes."""
    return f"{prefix}-{replica}"[:63] if replica else prefix


class PgDatabase:
    """The pool of one PostgreSQL database. Build it with :meth:`open`."""

    def __init__(
        self,
        name: str,
        pool: ConnectionPool,
        size: int,
        schema_version: int,
        connect: Callable[[str], psycopg.Connection],
    ) -> None:
        self.name = name  # the redacted URL
        self.schema_version = schema_version
        # Names this process in the signals it sends (it ignores its own).
        self.origin = uuid.uuid4().hex[:16]
        self._connect = connect
        self._pool = pool
        self._limiter = trio.CapacityLimiter(size)
        self._closed = False
        self._pool_log = OnePoolLinePerMinute()
        logging.getLogger("psycopg.pool").addFilter(self._pool_log)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        password: str | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        replica: str = "",
    ) -> PgDatabase:
        """Connect (within :data:`CONNECT_SECONDS`), migrate under the migration lock, and
        keep up to ``pool_size`` connections. CannotOpen names the redacted URL. The
        connections' ``application_name`` is ``marveld-<replica>`` (pg_stat_activity)."""
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        name = redacted(url)
        application = _application("marveld", replica)
        try:
            pool, version = await trio.to_thread.run_sync(
                _open_pool, url, password, pool_size, name, application
            )
        except PoolTimeout as exc:
            raise CannotOpen(
                f"cannot connect to database {name} within {CONNECT_SECONDS:g} s: {exc}"
            ) from exc
        except psycopg.Error as exc:
            raise CannotOpen(f"cannot open database {name}: {exc}") from exc
        log.debug("database %s open (schema %d, pool of %d)", name, version, pool_size)

        def connect(purpose: str) -> psycopg.Connection:
            return psycopg.connect(
                url,
                autocommit=True,
                password=password,
                connect_timeout=int(CONNECT_SECONDS),
                application_name=_application(f"marveld-{purpose}", replica),
                **KEEPALIVES,
            )

        return cls(name, pool, pool_size, version, connect)

    def dedicated(self, purpose: str) -> psycopg.Connection:
        """A connection of its own, outside the pool, in autocommit mode (blocking: call
        it in a worker thread): for LISTEN and session locks, which a pooled connection
        must not keep; ``application_name`` ``marveld-<purpose>-<replica>``. The caller
        closes it."""
        if self._closed:
            raise StorageError(f"database {self.name} is closed")
        return self._connect(purpose)

    async def write(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """Run ``fn`` in one transaction; roll back if it raises."""
        return await self._run(fn, read_only=False)

    async def read(self, fn: Callable[[psycopg.Connection], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` on a pooled connection; ``snapshot=True``: in one read-only
        repeatable-read transaction, so that several statements see the same state."""
        if snapshot:
            return await self._run(fn, read_only=True)
        return await self._call(fn)

    async def _run(self, fn: Callable[[psycopg.Connection], T], *, read_only: bool) -> T:
        def in_transaction(conn: psycopg.Connection) -> T:
            with conn.transaction():
                if read_only:
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                return fn(conn)

        return await self._call(in_transaction)

    async def _call(self, fn: Callable[[psycopg.Connection], T]) -> T:
        if self._closed:
            raise StorageError(f"database {self.name} is closed")

        def run() -> T:
            with self._pool.connection() as conn:
                return fn(conn)

        try:
            return await trio.to_thread.run_sync(run, limiter=self._limiter)
        except PoolTimeout as exc:
            raise Unreachable(f"database {self.name}: no connection: {exc}") from exc
        except psycopg.OperationalError as exc:  # the server went away, or cannot be reached
            raise Unreachable(f"database {self.name} is unreachable: {exc}") from exc
        except psycopg.Error as exc:
            raise StorageError(f"database {self.name} failed: {exc}") from exc

    async def close(self) -> None:
        """Wait for running statements, then close every connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(partial(self._pool.close, timeout=CONNECT_SECONDS))
        logging.getLogger("psycopg.pool").removeFilter(self._pool_log)
        log.debug("database %s closed", self.name)
