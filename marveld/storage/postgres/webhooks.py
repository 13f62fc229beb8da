"""The ``webhook_deliveries`` table on PostgreSQL (twin of marveld/storage/webhooks.py).

Differences from SQLite, and why:

- ``ids`` is a ``bigint[]`` (SQLite: JSON text), read back as a tuple of ints the same;
- times are ``timestamptz``, read back as aware datetimes and normalised to UTC;
- pending deliveries are ordered ``received_at, id COLLATE "C"``: SQLite compares text
  byte by byte, the database's collation need not.

A delivery is marked applied by ``changes.apply_changes(..., delivery_id=...)``, in the
transaction that applies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from marveld.storage.codec import text_to_time, time_to_text
from marveld.storage.postgres.database import PgDatabase
from marveld.storage.webhooks import KEEP_APPLIED, Delivery

__all__ = ["KEEP_APPLIED", "Delivery", "PgWebhookRepo"]


def _delivery(row: dict[str, Any]) -> Delivery:
    occurred_at: datetime | None = row["occurred_at"]
    return Delivery(
        id=row["id"],
        type=row["type"],
        ids=tuple(int(i) for i in row["ids"]),
        occurred_at=None if occurred_at is None else occurred_at.astimezone(UTC),
        received_at=row["received_at"].astimezone(UTC),
    )


class PgWebhookRepo:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def record(
        self,
        delivery_id: str,
        *,
        kind: str,
        ids: Sequence[int],
        occurred_at: datetime | None,
        now: datetime,
    ) -> bool:
        """Remember a delivery as pending; False when it was seen before."""
        stamp = text_to_time(time_to_text(now))  # refuses naive times, as SQLite's does
        occurred = None if occurred_at is None else text_to_time(time_to_text(occurred_at))

        def insert(conn: psycopg.Connection) -> bool:
            conn.execute(
                "DELETE FROM webhook_deliveries WHERE applied_at IS NOT NULL AND received_at < %s",
                (stamp - KEEP_APPLIED,),
            )
            cursor = conn.execute(
                "INSERT INTO webhook_deliveries (id, type, ids, occurred_at, received_at)"
                " VALUES (%s, %s, %s::bigint[], %s, %s) ON CONFLICT (id) DO NOTHING",
                (delivery_id, kind, [int(i) for i in ids], occurred, stamp),
            )
            return cursor.rowcount == 1

        return await self._db.write(insert)

    async def pending(self, limit: int = 100) -> list[Delivery]:
        """Deliveries not applied yet, oldest first."""

        def select(conn: psycopg.Connection) -> list[Delivery]:
            with conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(
                    "SELECT id, type, ids, occurred_at, received_at FROM webhook_deliveries"
                    ' WHERE applied_at IS NULL ORDER BY received_at, id COLLATE "C" LIMIT %s',
                    (limit,),
                ).fetchall()
            return [_delivery(row) for row in rows]

        return await self._db.read(select)
