"""The ``notifications`` table and the saga's step over the event log (what both backends
share, and the saga's rules: marveld/storage/notifications_base.py).

SQLite has one writer, so a step or a sweep needs no lock of its own.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime

from marveld.domain.notifications import Notification
from marveld.storage.codec import dump_json, load_json, text_to_time, time_to_text
from marveld.storage.notifications_base import (
    EVENT_COLUMNS,
    FLOOR,
    POSITION,
    SELECT_NOTIFICATIONS,
    SELECT_RECIPIENTS,
    NotificationPage,
    NotificationRepoBase,
    SagaStep,
)
from marveld.storage.sync_state import read_state, write_state

__all__ = ["FLOOR", "POSITION", "NotificationPage", "NotificationRepo", "SagaStep"]

log = logging.getLogger(__name__)


class NotificationRepo(NotificationRepoBase[sqlite3.Connection]):
    """The saga and notifications: times as text, id lists as JSON text (``json_each``)."""

    _read_state = staticmethod(read_state)
    _write_state = staticmethod(write_state)
    _to_time = staticmethod(text_to_time)
    _to_ids = staticmethod(load_json)

    def _lock(self, conn: sqlite3.Connection) -> None:
        pass  # the one writer

    def _events_after(
        self, conn: sqlite3.Connection, position: int, limit: int
    ) -> Iterable[sqlite3.Row]:
        return conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (position, limit),
        )

    def _recipient_rows(self, conn: sqlite3.Connection) -> Iterable[sqlite3.Row]:
        return conn.execute(SELECT_RECIPIENTS)

    def _character_rows(self, conn: sqlite3.Connection, ids: list[int]) -> Iterable[sqlite3.Row]:
        return conn.execute(
            "SELECT marvel_id, data FROM character_reads"
            " WHERE marvel_id IN (SELECT value FROM json_each(?))",
            (dump_json(ids),),
        )

    def _stream_events(
        self, conn: sqlite3.Connection, first: int, streams: list[str]
    ) -> Iterable[sqlite3.Row]:
        return conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events"
            " WHERE seq >= ? AND stream_id IN (SELECT value FROM json_each(?))"
            " ORDER BY seq DESC",
            (first, dump_json(streams)),
        )

    def _insert(
        self,
        conn: sqlite3.Connection,
        snapshots: list[tuple[int, str]],
        notes: Sequence[Notification],
        now: datetime,
    ) -> None:
        stamp = time_to_text(now)
        conn.executemany(
            "INSERT OR IGNORE INTO notification_characters (event_seq, character) VALUES (?, ?)",
            snapshots,
        )
        conn.executemany(
            "INSERT OR IGNORE INTO notifications (id, type, message, recipient_id, event_seq,"
            " cursor, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(n.id, n.type, n.message, n.recipient_id, n.cursor, n.cursor, stamp) for n in notes],
        )

    def _page_rows(
        self, conn: sqlite3.Connection, user_id: str, after: int, limit: int
    ) -> Iterable[sqlite3.Row]:
        return conn.execute(
            SELECT_NOTIFICATIONS
            + " WHERE n.recipient_id = ? AND n.cursor > ? ORDER BY n.cursor LIMIT ?",
            (user_id, after, limit),
        )

    def _feed_rows(
        self, conn: sqlite3.Connection, after: int, upto: int, limit: int | None
    ) -> Iterable[sqlite3.Row]:
        return conn.execute(
            SELECT_NOTIFICATIONS
            + " WHERE n.cursor > ? AND n.cursor <= ? ORDER BY n.cursor LIMIT ?",
            (after, upto, -1 if limit is None else limit),  # LIMIT -1: no limit
        )

    def _max_seq(self, conn: sqlite3.Connection) -> int | None:
        row = conn.execute("SELECT MAX(seq) FROM events").fetchone()
        return None if row[0] is None else int(row[0])

    def _mark_sent(self, conn: sqlite3.Connection, ids: list[str], now: datetime) -> None:
        conn.execute(
            "UPDATE notifications SET sent_at = ?"
            " WHERE id IN (SELECT value FROM json_each(?)) AND sent_at IS NULL",
            (time_to_text(now), dump_json(ids)),
        )

    def _expired(self, conn: sqlite3.Connection, before: datetime) -> tuple[int | None, int]:
        newest, count = conn.execute(
            "SELECT MAX(cursor), COUNT(*) FROM notifications WHERE created_at < ?",
            (time_to_text(before),),
        ).fetchone()
        return newest, count

    def _delete_expired(self, conn: sqlite3.Connection, before: datetime, newest: int) -> None:
        conn.execute("DELETE FROM notifications WHERE created_at < ?", (time_to_text(before),))
        conn.execute(
            "DELETE FROM notification_characters WHERE event_seq <= ? AND event_seq NOT IN"
            " (SELECT event_seq FROM notifications WHERE event_seq <= ?)",
            (newest, newest),
        )

    def _subscription_row(self, conn: sqlite3.Connection, user_id: str) -> tuple[str, str] | None:
        row = conn.execute(
            "SELECT character_ids, name_prefix FROM notification_subscriptions WHERE user_id = ?",
            (user_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def _delete_subscription(self, conn: sqlite3.Connection, user_id: str) -> None:
        conn.execute("DELETE FROM notification_subscriptions WHERE user_id = ?", (user_id,))

    def _upsert_subscription(
        self, conn: sqlite3.Connection, user_id: str, ids: list[int], prefix: str, now: datetime
    ) -> None:
        conn.execute(
            "INSERT INTO notification_subscriptions (user_id, character_ids, name_prefix,"
            " updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
            " character_ids = excluded.character_ids, name_prefix = excluded.name_prefix,"
            " updated_at = excluded.updated_at",
            (user_id, dump_json(ids), prefix, time_to_text(now)),
        )
