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
    """The database was written by a newer marveld than this one, and does not say that this
    one may run on it (``needs`` is None), or says it needs a marveld of schema version
    ``needs`` or later (PostgreSQL, after a contract migration): opening it would be unsafe."""

    def __init__(self, path: str, found: int, known: int, *, needs: int | None = None) -> None:
        newer = (
            f"database {path} has schema version {found}, newer than the newest this marveld "
            f"knows ({known})"
        )
        if needs is None:
            message = f"{newer}; upgrade marveld or point it at another database file"
        else:
            message = (
                f"{newer}, and needs a marveld of schema version {needs} or later (a "
                f"migration since {known} removed or changed what this one uses); upgrade "
                "marveld or point it at another database"
            )
        super().__init__(message)
        self.found = found
        self.known = known
        self.needs = needs
