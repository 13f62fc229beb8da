"""The ``webhook_deliveries`` table: each signed delivery once, pending until applied
(what both backends share: marveld/storage/webhooks_base.py)."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from marveld.storage.codec import dump_json, load_json, text_to_time, time_to_text
from marveld.storage.webhooks_base import (
    COLUMNS,
    KEEP_APPLIED,
    Delivery,
    WebhookRepoBase,
    delivery_from_row,
)

__all__ = ["KEEP_APPLIED", "Delivery", "WebhookRepo"]


class WebhookRepo(WebhookRepoBase[sqlite3.Connection]):
    """Deliveries by id: times as text, ``ids`` as JSON text."""

    def _forget_applied(self, conn: sqlite3.Connection, before: datetime) -> None:
        conn.execute(
            "DELETE FROM webhook_deliveries WHERE applied_at IS NOT NULL AND received_at < ?",
            (time_to_text(before),),
        )

    def _insert(self, conn: sqlite3.Connection, delivery: Delivery) -> bool:
        occurred = delivery.occurred_at
        cursor = conn.execute(
            f"INSERT INTO webhook_deliveries ({COLUMNS})"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (
                delivery.id,
                delivery.type,
                dump_json(list(delivery.ids)),
                None if occurred is None else time_to_text(occurred),
                time_to_text(delivery.received_at),
            ),
        )
        return cursor.rowcount == 1

    def _pending(self, conn: sqlite3.Connection, limit: int) -> list[Delivery]:
        rows = conn.execute(
            f"SELECT {COLUMNS} FROM webhook_deliveries"
            " WHERE applied_at IS NULL ORDER BY received_at, id LIMIT ?",
            (limit,),
        )
        return [delivery_from_row(row, to_time=text_to_time, to_ids=load_json) for row in rows]
