"""The facade: one open database and its repositories, on SQLite or PostgreSQL.

``Store.open(path)`` opens the embedded SQLite file, ``Store.open_url(url)`` a PostgreSQL
database. Both give the same repositories (same methods, same results, same errors), so
nothing outside ``marveld/storage`` knows which backend runs.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marveld.storage.cache import CacheRepo
from marveld.storage.changes import ChangeRepo
from marveld.storage.characters import CharacterRepo
from marveld.storage.coordination import Coordination, LocalCoordination
from marveld.storage.database import DEFAULT_READERS, Database
from marveld.storage.notifications import NotificationRepo
from marveld.storage.reads import ReadRepo
from marveld.storage.sync_state import SyncStateRepo
from marveld.storage.users import UserRepo
from marveld.storage.webhooks import WebhookRepo

if TYPE_CHECKING:  # psycopg is an optional extra: imported only by open_url
    from marveld.storage.postgres.database import PgDatabase

log = logging.getLogger(__name__)


class Store:
    """An open database and its repositories. Build it with :meth:`open` (SQLite) or
    :meth:`open_url` (PostgreSQL)."""

    users: UserRepo
    characters: CharacterRepo
    cache: CacheRepo
    changes: ChangeRepo
    reads: ReadRepo
    sync_state: SyncStateRepo
    webhooks: WebhookRepo
    notifications: NotificationRepo
    coordination: Coordination  # signals between replicas, the leader, cluster locks

    def __init__(
        self, db: Database | PgDatabase, repos: dict[str, Any], coordination: Coordination
    ) -> None:
        self._db = db
        self.coordination = coordination
        for name, repo in repos.items():
            setattr(self, name, repo)

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path, *, readers: int = DEFAULT_READERS) -> AsyncIterator[Store]:
        """Open (creating it and its folder if missing) and migrate the database at ``path``.

        WAL mode, ``busy_timeout`` 5000 ms and foreign keys are on for every connection.
        ``readers`` is the size of the read-connection pool. Raises ``SchemaTooNew`` for a
        database written by a newer marveld. Every connection is closed on exit.
        """
        db = await Database.open(Path(path), readers=readers)
        log.info("store %s open, schema version %d", db.path, db.schema_version)
        repos = {
            "users": UserRepo(db),
            "characters": CharacterRepo(db),
            "cache": CacheRepo(db),
            "changes": ChangeRepo(db),
            "reads": ReadRepo(db),
            "sync_state": SyncStateRepo(db),
            "webhooks": WebhookRepo(db),
            "notifications": NotificationRepo(db),
        }
        try:
            yield cls(db, repos, LocalCoordination())
        finally:
            await db.close()

    @classmethod
    @asynccontextmanager
    async def open_url(
        cls,
        url: str,
        *,
        password: str | None = None,
        pool_size: int | None = None,
        replica: str = "",
    ) -> AsyncIterator[Store]:
        """Connect to the PostgreSQL database at ``url`` (a libpq URL; ``password`` if not
        in it or libpq's environment) and migrate it under an advisory lock. Raises
        ``CannotOpen`` naming the URL without its password, ``SchemaTooNew`` for a database
        written by a newer marveld. The pool is closed on exit."""
        from marveld.storage.postgres import repos as pg
        from marveld.storage.postgres.coordination import PgCoordination
        from marveld.storage.postgres.database import DEFAULT_POOL_SIZE, PgDatabase

        db = await PgDatabase.open(
            url, password=password, pool_size=pool_size or DEFAULT_POOL_SIZE, replica=replica
        )
        log.info("store %s open, schema version %d", db.name, db.schema_version)
        try:
            yield cls(db, pg.repositories(db), PgCoordination(db))
        finally:
            await db.close()

    @classmethod
    def connect(
        cls,
        *,
        path: Path,
        url: str | None = None,
        password: str | None = None,
        pool_size: int | None = None,
        replica: str = "",
    ) -> AbstractAsyncContextManager[Store]:
        """PostgreSQL at ``url`` when given (:meth:`open_url`), else SQLite at ``path``
        (:meth:`open`): what ``database.url`` and ``database.path`` say. ``replica``
        names this process in PostgreSQL's ``application_name``."""
        if url is not None:
            return cls.open_url(url, password=password, pool_size=pool_size, replica=replica)
        return cls.open(path)

    @property
    def kind(self) -> str:
        """The backend, ``"sqlite"`` or ``"postgresql"``: the database tier's metric label."""
        return "sqlite" if isinstance(self._db, Database) else "postgresql"

    @property
    def name(self) -> str:
        """The database, for messages: the SQLite file, or the URL without its password."""
        return str(self._db.path) if isinstance(self._db, Database) else self._db.name

    @property
    def path(self) -> Path:
        """The SQLite file (SQLite only)."""
        if not isinstance(self._db, Database):
            raise AttributeError("a PostgreSQL store has no file path")
        return self._db.path

    @property
    def schema_version(self) -> int:
        return self._db.schema_version

    async def ping(self) -> None:
        """A trivial read, for readiness: raises StorageError when the database is unusable."""

        def select(conn: sqlite3.Connection | Any) -> None:
            conn.execute("SELECT 1").fetchone()

        await self._db.read(select)
