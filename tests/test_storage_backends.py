"""The two backends offer the same repositories: every public method of each SQLite
repository has a PostgreSQL twin with the same signature (the services call either)."""

from __future__ import annotations

import inspect

import pytest

from marveld.storage import (
    CacheRepo,
    ChangeRepo,
    CharacterRepo,
    NotificationRepo,
    ReadRepo,
    SyncStateRepo,
    UserRepo,
    WebhookRepo,
)
from marveld.storage.postgres import repos

SQLITE = {
    "users": UserRepo,
    "characters": CharacterRepo,
    "cache": CacheRepo,
    "changes": ChangeRepo,
    "reads": ReadRepo,
    "sync_state": SyncStateRepo,
    "webhooks": WebhookRepo,
    "notifications": NotificationRepo,
}


def public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


@pytest.mark.parametrize("name", sorted(SQLITE))
def test_each_postgresql_repository_has_the_sqlite_ones_methods(name: str) -> None:
    sqlite, postgres = public(SQLITE[name]), public(repos.classes()[name])
    assert sorted(postgres) == sorted(sqlite)
    for method, signature in sqlite.items():
        assert str(postgres[method]) == str(signature), f"{name}.{method}"
