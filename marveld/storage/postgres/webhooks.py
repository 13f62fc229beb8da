"""The ``webhook_deliveries`` table on PostgreSQL (twin of marveld/storage/webhooks.py;
what both share: marveld/storage/webhooks_base.py).

Differences from SQLite, and why:

- ``ids`` is a ``bigint[]`` (SQLite: JSON text), read back as a tuple of ints the same;
- times are ``timestamptz``, read back as aware datetimes and normalised to UTC;
- pending deliveries are ordered ``received_at, id COLLATE "C"``: SQLite compares text
  byte by byte, the database's collation need not.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from marveld.storage.postgres.coordination import PgAnnouncing
from marveld.storage.webhooks_base import (
    COLUMNS,
    KEEP_APPLIED,
    Delivery,
    WebhookRepoBase,
    delivery_from_row,
)

__all__ = ["KEEP_APPLIED", "Delivery", "PgWebhookRepo"]


def _to_time(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _to_ids(values: Iterable[Any]) -> Iterable[int]:
    return (int(i) for i in values)


class PgWebhookRepo(PgAnnouncing, WebhookRepoBase[psycopg.Connection]):
    """Deliveries by id: ``timestamptz`` times, ``ids`` as ``bigint[]``."""

    def _forget_applied(self, conn: psycopg.Connection, before: datetime) -> None:
        conn.execute(
            "DELETE FROM webhook_deliveries WHERE applied_at IS NOT NULL AND received_at < %s",
            (before,),
        )

    def _insert(self, conn: psycopg.Connection, delivery: Delivery) -> bool:
        cursor = conn.execute(
            f"INSERT INTO webhook_deliveries ({COLUMNS})"
            " VALUES (%s, %s, %s::bigint[], %s, %s) ON CONFLICT (id) DO NOTHING",
            (
                delivery.id,
                delivery.type,
                [int(i) for i in delivery.ids],
                delivery.occurred_at,
                delivery.received_at,
            ),
        )
        return cursor.rowcount == 1

    def _pending(self, conn: psycopg.Connection, limit: int) -> list[Delivery]:
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(
                f"SELECT {COLUMNS} FROM webhook_deliveries"
                ' WHERE applied_at IS NULL ORDER BY received_at, id COLLATE "C" LIMIT %s',
                (limit,),
            ).fetchall()
        return [delivery_from_row(row, to_time=_to_time, to_ids=_to_ids) for row in rows]
