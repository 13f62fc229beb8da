"""The ``webhook_deliveries`` table: each signed delivery once, pending until applied."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from marveld.storage.codec import (
    dump_json,
    load_json,
    optional_text_to_time,
    text_to_time,
    time_to_text,
)
from marveld.storage.database import Database

# Applied deliveries are kept this long: a replay needs a fresh timestamp (5 minutes), so a
# day is ample to recognize the same delivery sent twice.
KEEP_APPLIED: Final = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    type: str
    ids: tuple[int, ...]
    occurred_at: datetime | None
    received_at: datetime


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row["id"],
        type=row["type"],
        ids=tuple(load_json(row["ids"])),
        occurred_at=optional_text_to_time(row["occurred_at"]),
        received_at=text_to_time(row["received_at"]),
    )


class WebhookRepo:
    def __init__(self, db: Database) -> None:
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
        stamp = time_to_text(now)
        occurred = None if occurred_at is None else time_to_text(occurred_at)

        def insert(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "DELETE FROM webhook_deliveries WHERE applied_at IS NOT NULL AND received_at < ?",
                (time_to_text(now - KEEP_APPLIED),),
            )
            cursor = conn.execute(
                "INSERT INTO webhook_deliveries (id, type, ids, occurred_at, received_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (delivery_id, kind, dump_json(list(ids)), occurred, stamp),
            )
            return cursor.rowcount == 1

        return await self._db.write(insert)

    async def pending(self, limit: int = 100) -> list[Delivery]:
        """Deliveries not applied yet, oldest first."""

        def select(conn: sqlite3.Connection) -> list[Delivery]:
            rows = conn.execute(
                "SELECT id, type, ids, occurred_at, received_at FROM webhook_deliveries"
                " WHERE applied_at IS NULL ORDER BY received_at, id LIMIT ?",
                (limit,),
            )
            return [_delivery(row) for row in rows]

        return await self._db.read(select)
