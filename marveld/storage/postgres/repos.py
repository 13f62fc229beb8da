"""The PostgreSQL repositories of a :class:`~marveld.storage.Store`, by attribute name."""

from __future__ import annotations

from typing import Any

from marveld.storage.postgres.database import PgDatabase


def classes() -> dict[str, type]:
    """Each repository class by Store attribute; each module mirrors its SQLite twin in
    marveld/storage/ (same methods: tests/test_storage_backends.py)."""
    from marveld.storage.postgres.cache import PgCacheRepo
    from marveld.storage.postgres.changes import PgChangeRepo
    from marveld.storage.postgres.characters import PgCharacterRepo
    from marveld.storage.postgres.notifications import PgNotificationRepo
    from marveld.storage.postgres.reads import PgReadRepo
    from marveld.storage.postgres.sync_state import PgSyncStateRepo
    from marveld.storage.postgres.users import PgUserRepo
    from marveld.storage.postgres.webhooks import PgWebhookRepo

    return {
        "users": PgUserRepo,
        "characters": PgCharacterRepo,
        "cache": PgCacheRepo,
        "changes": PgChangeRepo,
        "reads": PgReadRepo,
        "sync_state": PgSyncStateRepo,
        "webhooks": PgWebhookRepo,
        "notifications": PgNotificationRepo,
    }


def repositories(db: PgDatabase) -> dict[str, Any]:
    return {name: cls(db) for name, cls in classes().items()}
