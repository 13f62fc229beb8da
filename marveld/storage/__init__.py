"""SQLite storage: schema, migrations and repositories. The one place that knows sqlite3.

Open a :class:`Store` with ``async with Store.open(path) as store:`` and use its
repositories (``store.users``, ``store.characters``, ``store.cache``, ``store.changes``,
``store.reads``, ``store.sync_state``, ``store.webhooks``).
"""

from __future__ import annotations

from marveld.storage.cache import CacheEntry, CacheRepo
from marveld.storage.changes import BatchResult, ChangeRepo
from marveld.storage.characters import CharacterRepo
from marveld.storage.errors import CannotOpen, SchemaTooNew, StorageError
from marveld.storage.notifications import NotificationPage, NotificationRepo, SagaStep
from marveld.storage.reads import ReadRepo, SearchResult
from marveld.storage.schema import LATEST_VERSION
from marveld.storage.store import Store
from marveld.storage.sync_state import SyncStateRepo
from marveld.storage.users import UserRepo
from marveld.storage.webhooks import Delivery, WebhookRepo

__all__ = [
    "LATEST_VERSION",
    "BatchResult",
    "CacheEntry",
    "CacheRepo",
    "CannotOpen",
    "ChangeRepo",
    "CharacterRepo",
    "Delivery",
    "NotificationPage",
    "NotificationRepo",
    "ReadRepo",
    "SagaStep",
    "SchemaTooNew",
    "SearchResult",
    "StorageError",
    "Store",
    "SyncStateRepo",
    "UserRepo",
    "WebhookRepo",
]
