"""SQLite storage: schema, migrations and repositories. The one place that knows sqlite3.

Open a :class:`Store` with ``async with Store.open(path) as store:`` and use its
repositories (``store.users``, ``store.characters``, ``store.cache``).
"""

from __future__ import annotations

from marveld.storage.cache import CacheEntry, CacheRepo
from marveld.storage.characters import CharacterRepo
from marveld.storage.errors import SchemaTooNew, StorageError
from marveld.storage.schema import LATEST_VERSION
from marveld.storage.store import Store
from marveld.storage.users import UserRepo

__all__ = [
    "LATEST_VERSION",
    "CacheEntry",
    "CacheRepo",
    "CharacterRepo",
    "SchemaTooNew",
    "StorageError",
    "Store",
    "UserRepo",
]
