"""Replicas on one PostgreSQL database: signals by LISTEN/NOTIFY, the leader and cluster
locks by session advisory locks (the backend-neutral side: marveld/storage/coordination.py).

- **Signals.** A write that other replicas must hear of calls :func:`announce` in its own
  transaction: ``pg_notify`` on channel :data:`CHANNEL` is delivered when, and only if,
  the transaction commits. The payload is JSON under PostgreSQL's 8,000-byte limit; a key
  list that would not fit is sent as "every key". Each process names itself in what it
  sends (``PgDatabase.origin``) and ignores its own signals. :meth:`PgCoordination.watch`
  LISTENs on a dedicated connection (outside the pool), pinged while quiet; when it fails
  it reconnects at once, then with backoff, and says how it hears the others meanwhile
  (:class:`~marveld.storage.coordination.Hearing`).
- **The leader** holds :data:`~marveld.storage.postgres.schema.LEADER_LOCK`, a session
  lock, on a dedicated connection. When the leader dies its connection closes and
  PostgreSQL releases the lock; the others try every :data:`LEASE_SECONDS`. The holder
  pings its connection as often and gives leadership up as soon as a ping fails or takes
  longer than :data:`PING_TIMEOUT` (a partition: PostgreSQL releases the lock once TCP
  keepalives give up, about 5 s, so for a few seconds two replicas may both act as
  leader; their duties are idempotent: each sync batch and saga step takes its lock).
- **Cluster locks** (:meth:`PgCoordination.exclusive`): a session lock on a dedicated
  connection, for what spans many transactions (a sync).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import psycopg
import trio

from marveld.storage.coordination import (
    Announcing,
    Decide,
    Hearing,
    Lease,
    OnHearing,
    OnSignal,
    Signal,
)
from marveld.storage.errors import StorageError
from marveld.storage.postgres.database import PgDatabase
from marveld.storage.postgres.schema import LEADER_LOCK, SYNC_LOCK

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL: Final = "marveld"
MAX_PAYLOAD: Final = 7000  # bytes; PostgreSQL refuses a payload of 8,000 or more
LISTEN_POLL: Final = 0.5  # seconds a wait for notifications lasts; then a ping
LEASE_SECONDS: Final = 0.5  # how often a candidate tries the lock, the leader pings
PING_TIMEOUT: Final = 2.0
CONNECT_TIMEOUT: Final = 10.0
RECONNECT_INITIAL: Final = 0.2
RECONNECT_MAX: Final = 2.0
LOCKS: Final[Mapping[str, int]] = {"sync": SYNC_LOCK}


def announce(conn: psycopg.Connection, origin: str, signal: Signal) -> None:
    """Tell the other replicas, when this transaction commits, what it changed."""
    payload: dict[str, Any] = {"o": origin}
    if signal.every_key:
        payload["all"] = True
    elif signal.keys:
        payload["k"] = list(dict.fromkeys(signal.keys))
    if signal.position is not None:
        payload["p"] = signal.position
    if signal.webhook:
        payload["w"] = True
    if len(payload) == 1:
        return
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > MAX_PAYLOAD:
        del payload["k"]
        payload["all"] = True
        text = json.dumps(payload, separators=(",", ":"))
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, text))


class PgAnnouncing(Announcing):
    """The PostgreSQL twins' :class:`Announcing`: :func:`announce` in the transaction."""

    _db: Any  # the repository's PgDatabase

    def _announce(self, conn: object, signal: Signal) -> None:
        assert isinstance(conn, psycopg.Connection)
        announce(conn, self._db.origin, signal)


def parse(payload: str, origin: str) -> Signal | None:
    """The signal in ``payload``; None for our own or one we cannot read."""
    try:
        data = json.loads(payload)
        if not isinstance(data, dict) or data.get("o") == origin:
            return None
        keys = data.get("k", [])
        position = data.get("p")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("k is not a list of keys")
        if position is not None and not isinstance(position, int):
            raise ValueError("p is not a cursor")
        return Signal(
            keys=tuple(keys),
            every_key=data.get("all") is True,
            position=position,
            webhook=data.get("w") is True,
        )
    except ValueError as exc:
        log.warning("signal %.80r ignored: %s", payload, exc)
        return None


def _try_lock(conn: psycopg.Connection, key: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


def _ping(conn: psycopg.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


def _waiting(conn: psycopg.Connection) -> list[psycopg.Notify]:
    """The next notifications, or none within :data:`LISTEN_POLL`."""
    return list(conn.notifies(timeout=LISTEN_POLL, stop_after=1))


async def _blocking(fn: Callable[..., T], *args: Any, timeout: float) -> T:  # noqa: ASYNC109
    """``fn(*args)`` in a worker thread, given up after ``timeout`` seconds (TooSlowError)
    or on cancellation: a call on a connection to a partitioned server may hang until
    TCP gives up, and nothing here may hang with it. An abandoned call ends on its own."""
    with trio.fail_after(timeout):
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


async def _close(conn: psycopg.Connection) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(PING_TIMEOUT):
        await trio.to_thread.run_sync(conn.close, abandon_on_cancel=True)


class PgCoordination:
    """Signals, the leader and cluster locks, each on a dedicated connection."""

    shared = True

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def _connect(self, purpose: str) -> psycopg.Connection:
        return await _blocking(self._db.dedicated, purpose, timeout=CONNECT_TIMEOUT)

    # --- signals ------------------------------------------------------------------------------

    async def watch(
        self,
        on_signal: OnSignal,
        on_hearing: OnHearing,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        failures = 0  # connection attempts in a row that did not end up listening
        started = False
        while True:
            try:
                conn = await self._connect("listen")
            except (psycopg.Error, StorageError, trio.TooSlowError) as exc:
                conn = None
                if failures == 0:
                    log.warning(
                        "cannot LISTEN on database %s: %s",
                        self._db.name,
                        " ".join(str(exc).split()) or type(exc).__name__,
                    )
                on_hearing(Hearing.UNREACHABLE)
            if conn is not None:
                try:
                    await _blocking(conn.execute, f"LISTEN {CHANNEL}", timeout=PING_TIMEOUT)
                    if failures:
                        log.info("listening to the other replicas again")
                    failures = 0
                    on_hearing(Hearing.LISTENING)
                    if not started:
                        started = True
                        task_status.started()
                    await self._listen(conn, on_signal)
                except (psycopg.Error, trio.TooSlowError) as exc:
                    log.warning(
                        "LISTEN connection to %s lost (%s): reading the database until it is back",
                        self._db.name,
                        " ".join(str(exc).split()) or type(exc).__name__,
                    )
                    on_hearing(Hearing.LOST)
                finally:
                    await _close(conn)
            if not started:  # the daemon starts all the same; readiness says NOT_SERVING
                started = True
                task_status.started()
            failures += 1
            if failures > 1:  # a loss is retried at once, then with backoff
                await trio.sleep(min(RECONNECT_MAX, RECONNECT_INITIAL * 2 ** (failures - 2)))

    async def _listen(self, conn: psycopg.Connection, on_signal: OnSignal) -> None:
        while True:
            notes = await _blocking(_waiting, conn, timeout=LISTEN_POLL + PING_TIMEOUT)
            if not notes:
                await _blocking(_ping, conn, timeout=PING_TIMEOUT)
            for note in notes:
                signal = parse(note.payload, self._db.origin)
                if signal is not None:
                    on_signal(signal)

    # --- the leader ---------------------------------------------------------------------------

    @asynccontextmanager
    async def leadership(self) -> AsyncIterator[Lease]:
        conn = await self._campaign()
        lease = Lease()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep, conn, lease)
                try:
                    yield lease
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await _close(conn)

    async def _campaign(self) -> psycopg.Connection:
        """A connection holding the leader lock, once this replica could take it."""
        while True:
            try:
                conn = await self._connect("leader")
            except (psycopg.Error, StorageError, trio.TooSlowError):
                await trio.sleep(LEASE_SECONDS)
                continue
            try:
                while True:  # PostgreSQL tells no one when a lock is released: ask again
                    if await _blocking(_try_lock, conn, LEADER_LOCK, timeout=PING_TIMEOUT):
                        return conn
                    await trio.sleep(LEASE_SECONDS)
            except (psycopg.Error, trio.TooSlowError):
                await _close(conn)
                await trio.sleep(LEASE_SECONDS)
            except BaseException:
                await _close(conn)
                raise

    async def _keep(self, conn: psycopg.Connection, lease: Lease) -> None:
        try:
            while True:
                await trio.sleep(LEASE_SECONDS)
                await _blocking(_ping, conn, timeout=PING_TIMEOUT)
        except (psycopg.Error, trio.TooSlowError) as exc:
            log.warning(
                "leader connection to %s lost: %s",
                self._db.name,
                " ".join(str(exc).split()) or type(exc).__name__,
            )
            lease.end()

    def rates(self) -> PgRates:
        return PgRates(self._db)

    # --- cluster locks ------------------------------------------------------------------------

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        key = LOCKS[name]
        try:
            conn = await self._connect(name)
        except (psycopg.Error, trio.TooSlowError) as exc:
            raise StorageError(f"cannot take the {name} lock: {exc}") from exc
        try:
            try:
                taken = await _blocking(_try_lock, conn, key, timeout=PING_TIMEOUT)
            except (psycopg.Error, trio.TooSlowError) as exc:
                raise StorageError(f"cannot take the {name} lock: {exc}") from exc
            yield taken
        finally:
            await _close(conn)  # a session lock ends with its session


class PgRates:
    """:class:`~marveld.storage.coordination.SharedRates` in the UNLOGGED ``rate_tats``."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def change(self, keys: Sequence[str], decide: Decide[T], *, expired: float) -> T:
        wanted = sorted(set(keys))  # locked in one order: two changes cannot deadlock

        def run(conn: psycopg.Connection) -> T:
            conn.execute(
                "DELETE FROM rate_tats WHERE key IN (SELECT key FROM rate_tats"
                " WHERE tat < %s AND NOT key = ANY(%s) LIMIT 2 FOR UPDATE SKIP LOCKED)",
                (expired, wanted),
            )
            # Every key gets a row to lock (a time long past counts nothing), so that two
            # first attempts at one key on two replicas cannot both read "no count".
            conn.execute(
                "INSERT INTO rate_tats (key, tat) SELECT k, %s FROM unnest(%s::text[]) AS k"
                " ORDER BY k ON CONFLICT (key) DO NOTHING",
                (expired, wanted),
            )
            rows = conn.execute(
                "SELECT key, tat FROM rate_tats WHERE key = ANY(%s) ORDER BY key FOR UPDATE",
                (wanted,),
            ).fetchall()
            changes, result = decide({str(k): float(t) for k, t in rows})
            for key, tat in changes.items():
                if tat is None:
                    conn.execute("DELETE FROM rate_tats WHERE key = %s", (key,))
                else:
                    conn.execute(
                        "INSERT INTO rate_tats (key, tat) VALUES (%s, %s)"
                        " ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                        (key, tat),
                    )
            return result

        return await self._db.write(run)
