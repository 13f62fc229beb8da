"""Connections to the SQLite file: one writer, a small pool of readers, all used in threads.

SQLite's Python module blocks, so every call runs in a worker thread
(``trio.to_thread.run_sync``). Writes go through ONE connection behind a
``CapacityLimiter(1)``, each in its own ``BEGIN IMMEDIATE`` transaction. Reads take a
connection from a fixed pool (a memory channel holding the idle ones), so a connection is
used by one thread at a time and, in WAL mode, reads never wait for the writer.

Threads are never abandoned on cancellation: a statement that started finishes, and a
write commits or rolls back as a whole before the cancelled task sees ``Cancelled``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from marveld.storage.errors import CannotOpen, StorageError
from marveld.storage.schema import migrate

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
DEFAULT_READERS = 4


def _connect(path: Path, *, reader: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), rows as ``sqlite3.Row``."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        # PRAGMAs take no parameters; the values are constants of this module.
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        if reader:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _open_writer(path: Path) -> tuple[sqlite3.Connection, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path, reader=False)
    try:
        mode = _switch_to_wal(conn)
        if str(mode).lower() != "wal":
            log.warning("database %s: journal_mode is %s, not wal", path, mode)
        # With WAL, NORMAL keeps every transaction atomic and survives a process crash;
        # only an OS crash or power loss can lose the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
        version = migrate(conn, name=str(path))
    except BaseException:
        conn.close()
        raise
    return conn, version


def _switch_to_wal(conn: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode = WAL``. Switching takes an exclusive lock and SQLite does not
    wait for it (no busy handler there): when another process or connection opens the same
    new file at that moment, retry for up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _close_all(conns: list[sqlite3.Connection]) -> None:
    for conn in conns:
        conn.close()


def _in_transaction(
    conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T], begin: str
) -> T:
    conn.execute(begin)
    try:
        result = fn(conn)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class Database:
    """The connections of one open database file. Build it with :meth:`open`."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        readers: list[sqlite3.Connection],
        schema_version: int,
    ) -> None:
        self.path = path
        self.schema_version = schema_version
        self._writer = writer
        self._writer_limiter = trio.CapacityLimiter(1)
        self._reader_count = len(readers)
        self._idle_send, self._idle_recv = trio.open_memory_channel[sqlite3.Connection](
            len(readers)
        )
        for conn in readers:
            self._idle_send.send_nowait(conn)
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, readers: int = DEFAULT_READERS) -> Database:
        """Create the file (and its folder) if missing, switch to WAL, migrate, connect."""
        if readers < 1:
            raise ValueError(f"readers must be at least 1, got {readers}")
        try:
            writer, version = await trio.to_thread.run_sync(_open_writer, path)
        except sqlite3.Error as exc:
            raise CannotOpen(f"cannot open database {path}: {exc}") from exc
        except OSError as exc:
            raise CannotOpen(f"cannot create database {path}: {exc}") from exc
        opened: list[sqlite3.Connection] = []
        try:
            for _ in range(readers):
                opened.append(await trio.to_thread.run_sync(partial(_connect, path, reader=True)))
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close_all, [*opened, writer])
            if isinstance(exc, sqlite3.Error):
                raise CannotOpen(f"cannot open database {path}: {exc}") from exc
            raise
        log.debug("database %s open (schema %d, %d readers)", path, version, readers)
        return cls(path, writer, opened, version)

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the writer in one ``BEGIN IMMEDIATE`` transaction; roll back if it
        raises. Writes run one at a time, in the order the limiter hands out turns."""

        def run() -> T:
            if self._closed:
                raise StorageError(f"database {self.path} is closed")
            return _in_transaction(self._writer, fn, "BEGIN IMMEDIATE")

        try:
            return await trio.to_thread.run_sync(run, limiter=self._writer_limiter)
        except sqlite3.Error as exc:
            raise StorageError(f"database write failed: {exc}") from exc

    async def read(self, fn: Callable[[sqlite3.Connection], T], *, snapshot: bool = False) -> T:
        """Run ``fn`` on an idle reader. ``snapshot=True`` wraps it in one read transaction
        so that several statements see the same state."""
        if self._closed:
            raise StorageError(f"database {self.path} is closed")
        try:
            conn = await self._idle_recv.receive()
        except trio.ClosedResourceError:
            raise StorageError(f"database {self.path} is closed") from None
        try:
            if snapshot:
                return await trio.to_thread.run_sync(_in_transaction, conn, fn, "BEGIN")
            return await trio.to_thread.run_sync(fn, conn)
        except sqlite3.Error as exc:
            raise StorageError(f"database read failed: {exc}") from exc
        finally:
            self._idle_send.send_nowait(conn)

    async def close(self) -> None:
        """Wait for running statements, then close every connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            readers = [await self._idle_recv.receive() for _ in range(self._reader_count)]
            self._idle_recv.close()
            await trio.to_thread.run_sync(_close_all, readers)
            async with self._writer_limiter:
                await trio.to_thread.run_sync(self._close_writer)
        log.debug("database %s closed", self.path)

    def _close_writer(self) -> None:
        try:
            self._writer.execute("PRAGMA optimize")
        except sqlite3.Error as exc:
            log.warning("database %s: PRAGMA optimize failed: %s", self.path, exc)
        self._writer.close()
