"""Errors the storage layer raises, so that no caller needs to know sqlite3."""

from __future__ import annotations

from marveld.domain.errors import CannotStart, DatabaseUnavailable, MarveldError


class StorageError(MarveldError):
    """The database failed (I/O, lock timeout, a closed store). Not the client's fault."""


class Unreachable(StorageError, DatabaseUnavailable):
    """The database server cannot be reached or dropped the connection; marveld reconnects
    by itself, so the same call may succeed in a moment."""


class CannotOpen(StorageError, CannotStart):
    """The database file cannot be opened: not a database, not readable, or its folder
    cannot be created."""


class SchemaTooNew(CannotOpen):
    """The database was written by a newer marveld than this one; opening it would be unsafe."""

    def __init__(self, path: str, found: int, known: int) -> None:
        super().__init__(
            f"database {path} has schema version {found}, newer than the newest this marveld "
            f"knows ({known}); upgrade marveld or point it at another database file"
        )
        self.found = found
        self.known = known
