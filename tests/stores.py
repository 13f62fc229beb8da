"""Looking inside a store from a test, whichever its backend: raw SQL rows."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from marveld.config import Settings
from marveld.storage import Store


def is_postgres(store: Store) -> bool:
    return store.name.startswith(("postgresql:", "postgres:"))


async def rows(store: Store, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` (``?`` placeholders, rewritten as ``%s`` for PostgreSQL, and a
    literal ``%`` as ``%%``), read
    through the store's own connections, as tuples."""
    if is_postgres(store):
        sql = sql.replace("%", "%%").replace("?", "%s")

    def select(conn: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in conn.execute(sql, params).fetchall()]

    return await store._db.read(select)


def open_store(settings: Settings) -> AbstractAsyncContextManager[Store]:
    """The store a daemon with ``settings`` uses, opened beside it."""
    db = settings.database
    return Store.connect(path=db.path, url=db.url, password=settings.secrets.database_password)


async def rows_of(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """:func:`rows` of the store a daemon with ``settings`` uses."""
    async with open_store(settings) as store:
        return await rows(store, sql, *params)
