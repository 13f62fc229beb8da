"""The ``notifications`` table and the saga's step over the event log, on PostgreSQL
(twin of marveld/storage/notifications.py; the saga, cursors and retention they share:
marveld/storage/notifications_base.py).

Differences from SQLite, and why:

- a saga step and :meth:`PgNotificationRepo.sweep` take the transaction-scoped advisory
  lock :data:`NOTIFY_LOCK` first: SQLite has one writer, PostgreSQL does not, and two
  replicas stepping at once would both read the same position (read committed) and
  publish the same events twice; a sweep would race the floor. The log itself is read in
  seq order, which is commit order (``events.append`` holds ``EVENT_LOCK``);
- subscriptions' ``character_ids`` and the id lists the queries look into are
  ``bigint[]`` with ``= ANY(%s)`` (SQLite: JSON text and ``json_each``);
- ``INSERT OR IGNORE`` is ``INSERT ... ON CONFLICT DO NOTHING``;
- times are ``timestamptz``, read back as aware datetimes and normalised to UTC.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from marveld.domain.notifications import Notification
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
from marveld.storage.postgres.coordination import PgAnnouncing
from marveld.storage.postgres.schema import NOTIFY_LOCK
from marveld.storage.postgres.sync_state import read_state, write_state

__all__ = [
    "FLOOR",
    "NOTIFY_LOCK",
    "POSITION",
    "NotificationPage",
    "PgNotificationRepo",
    "SagaStep",
]

log = logging.getLogger(__name__)


def _to_time(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _to_ids(values: Iterable[Any]) -> Iterable[int]:
    return (int(i) for i in values)


def _rows(conn: psycopg.Connection, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


class PgNotificationRepo(PgAnnouncing, NotificationRepoBase[psycopg.Connection]):
    """The saga and notifications: ``timestamptz`` times, id lists as ``bigint[]``."""

    _read_state = staticmethod(read_state)
    _write_state = staticmethod(write_state)
    _to_time = staticmethod(_to_time)
    _to_ids = staticmethod(_to_ids)

    def _lock(self, conn: psycopg.Connection) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (NOTIFY_LOCK,))

    def _events_after(
        self, conn: psycopg.Connection, position: int, limit: int
    ) -> list[dict[str, Any]]:
        return _rows(
            conn,
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
            (position, limit),
        )

    def _recipient_rows(self, conn: psycopg.Connection) -> list[dict[str, Any]]:
        return _rows(conn, SELECT_RECIPIENTS, ())

    def _character_rows(self, conn: psycopg.Connection, ids: list[int]) -> list[dict[str, Any]]:
        return _rows(
            conn,
            "SELECT marvel_id, data FROM character_reads WHERE marvel_id = ANY(%s::bigint[])",
            (ids,),
        )

    def _stream_events(
        self, conn: psycopg.Connection, first: int, streams: list[str]
    ) -> list[dict[str, Any]]:
        return _rows(
            conn,
            f"SELECT {EVENT_COLUMNS} FROM events"
            " WHERE seq >= %s AND stream_id = ANY(%s::text[])"
            " ORDER BY seq DESC",
            (first, streams),
        )

    def _insert(
        self,
        conn: psycopg.Connection,
        snapshots: list[tuple[int, str]],
        notes: Sequence[Notification],
        now: datetime,
    ) -> None:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO notification_characters (event_seq, character) VALUES (%s, %s)"
                " ON CONFLICT DO NOTHING",
                snapshots,
            )
            cur.executemany(
                "INSERT INTO notifications (id, type, message, recipient_id, event_seq,"
                " cursor, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                [(n.id, n.type, n.message, n.recipient_id, n.cursor, n.cursor, now) for n in notes],
            )

    def _page_rows(
        self, conn: psycopg.Connection, user_id: str, after: int, limit: int
    ) -> list[dict[str, Any]]:
        return _rows(
            conn,
            SELECT_NOTIFICATIONS
            + " WHERE n.recipient_id = %s AND n.cursor > %s ORDER BY n.cursor LIMIT %s",
            (user_id, after, limit),
        )

    def _feed_rows(
        self, conn: psycopg.Connection, after: int, upto: int, limit: int | None
    ) -> list[dict[str, Any]]:
        return _rows(
            conn,
            SELECT_NOTIFICATIONS
            + " WHERE n.cursor > %s AND n.cursor <= %s ORDER BY n.cursor LIMIT %s",
            (after, upto, limit),  # LIMIT NULL: no limit
        )

    def _max_seq(self, conn: psycopg.Connection) -> int | None:
        row = conn.execute("SELECT MAX(seq) FROM events").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _mark_sent(self, conn: psycopg.Connection, ids: list[str], now: datetime) -> None:
        conn.execute(
            "UPDATE notifications SET sent_at = %s WHERE id = ANY(%s::text[]) AND sent_at IS NULL",
            (now, ids),
        )

    def _expired(self, conn: psycopg.Connection, before: datetime) -> tuple[int | None, int]:
        row = conn.execute(
            "SELECT MAX(cursor), COUNT(*) FROM notifications WHERE created_at < %s", (before,)
        ).fetchone()
        assert row is not None  # an aggregate always returns a row
        return row[0], row[1]

    def _delete_expired(self, conn: psycopg.Connection, before: datetime, newest: int) -> None:
        conn.execute("DELETE FROM notifications WHERE created_at < %s", (before,))
        conn.execute(
            "DELETE FROM notification_characters WHERE event_seq <= %s AND event_seq NOT IN"
            " (SELECT event_seq FROM notifications WHERE event_seq <= %s)",
            (newest, newest),
        )

    def _subscription_row(self, conn: psycopg.Connection, user_id: str) -> tuple[Any, str] | None:
        row = conn.execute(
            "SELECT character_ids, name_prefix FROM notification_subscriptions WHERE user_id = %s",
            (user_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def _delete_subscription(self, conn: psycopg.Connection, user_id: str) -> None:
        conn.execute("DELETE FROM notification_subscriptions WHERE user_id = %s", (user_id,))

    def _upsert_subscription(
        self, conn: psycopg.Connection, user_id: str, ids: list[int], prefix: str, now: datetime
    ) -> None:
        conn.execute(
            "INSERT INTO notification_subscriptions (user_id, character_ids, name_prefix,"
            " updated_at) VALUES (%s, %s::bigint[], %s, %s) ON CONFLICT (user_id) DO UPDATE"
            " SET character_ids = excluded.character_ids,"
            " name_prefix = excluded.name_prefix, updated_at = excluded.updated_at",
            (user_id, ids, prefix, now),
        )
