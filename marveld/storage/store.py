"""The facade: one open database file and its repositories."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from marveld.storage.cache import CacheRepo
from marveld.storage.changes import ChangeRepo
from marveld.storage.characters import CharacterRepo
from marveld.storage.database import DEFAULT_READERS, Database
from marveld.storage.notifications import NotificationRepo
from marveld.storage.reads import ReadRepo
from marveld.storage.sync_state import SyncStateRepo
from marveld.storage.users import UserRepo
from marveld.storage.webhooks import WebhookRepo

log = logging.getLogger(__name__)


class Store:
    """An open database and its repositories. Build it with :meth:`open`."""

    users: UserRepo
    characters: CharacterRepo
    cache: CacheRepo
    changes: ChangeRepo
    reads: ReadRepo
    sync_state: SyncStateRepo
    webhooks: WebhookRepo
    notifications: NotificationRepo

    def __init__(self, db: Database) -> None:
        self._db = db
        self.users = UserRepo(db)
        self.characters = CharacterRepo(db)
        self.cache = CacheRepo(db)
        self.changes = ChangeRepo(db)
        self.reads = ReadRepo(db)
        self.sync_state = SyncStateRepo(db)
        self.webhooks = WebhookRepo(db)
        self.notifications = NotificationRepo(db)

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
        try:
            yield cls(db)
        finally:
            await db.close()

    @property
    def path(self) -> Path:
        return self._db.path

    @property
    def schema_version(self) -> int:
        return self._db.schema_version

    async def ping(self) -> None:
        """A trivial read, for readiness: raises StorageError when the database is unusable."""

        def select(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT 1").fetchone()

        await self._db.read(select)
