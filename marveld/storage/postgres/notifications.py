"""The ``notifications`` table and the saga's step over the event log, on PostgreSQL
(twin of marveld/storage/notifications.py: the saga, cursors and retention are the same).

Differences from SQLite, and why:

- :func:`saga_step` and :meth:`PgNotificationRepo.sweep` take the transaction-scoped
  advisory lock :data:`NOTIFY_LOCK` first: SQLite has one writer, PostgreSQL does not, and
  two replicas stepping at once would both read the same position (read committed) and
  publish the same events twice; a sweep would race the floor. The log itself is read in
  seq order, which is commit order (``events.append`` holds ``EVENT_LOCK``);
- subscriptions' ``character_ids`` and the id lists the queries look into are
  ``bigint[]`` with ``= ANY(%s)`` (SQLite: JSON text and ``json_each``);
- ``INSERT OR IGNORE`` is ``INSERT ... ON CONFLICT DO NOTHING``;
- times are ``timestamptz``, read back as aware datetimes and normalised to UTC.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from marveld.domain.notifications import (
    Filter,
    LoggedEvent,
    Notification,
    Recipient,
    message_for,
    recipients_of,
    silent,
    states_at,
)
from marveld.storage.codec import dump_json, load_json, text_to_time, time_to_text
from marveld.storage.notifications import FLOOR, POSITION, NotificationPage, SagaStep
from marveld.storage.postgres.database import PgDatabase
from marveld.storage.postgres.schema import NOTIFY_LOCK
from marveld.storage.postgres.sync_state import read_state, write_state
from marveld.storage.sync_state import BOOTSTRAP

__all__ = [
    "FLOOR",
    "NOTIFY_LOCK",
    "POSITION",
    "NotificationPage",
    "PgNotificationRepo",
    "SagaStep",
    "list_for",
    "saga_step",
]

log = logging.getLogger(__name__)

# Advisory lock key beside schema.py's MIGRATION_LOCK (…0001) and EVENT_LOCK (…0002): one
# saga step or retention sweep at a time, until its transaction ends.


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _rows(conn: psycopg.Connection, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(sql, params).fetchall()


def _event(row: dict[str, Any]) -> LoggedEvent:
    return LoggedEvent(
        seq=int(row["seq"]),
        id=row["id"],
        type=row["type"],
        correlation_id=row["correlation_id"] or "",
        created_at=_utc(row["created_at"]),
        occurred_at=_utc(row["occurred_at"]),
        data=load_json(row["data"]),
    )


def _recipients(conn: psycopg.Connection) -> list[Recipient]:
    return [
        Recipient(
            user_id=row["id"],
            created_at=_utc(row["created_at"]),
            filter=Filter(frozenset(int(i) for i in row["ids"] or ()), row["prefix"] or ""),
        )
        for row in _rows(
            conn,
            "SELECT users.id, users.created_at, s.character_ids AS ids, s.name_prefix AS prefix"
            " FROM users LEFT JOIN notification_subscriptions AS s ON s.user_id = users.id"
            " WHERE users.deleted_at IS NULL",
            (),
        )
    ]


def _states(
    conn: psycopg.Connection, events: Sequence[LoggedEvent]
) -> dict[int, dict[str, object]]:
    """The character as of each of ``events`` (see ``domain.notifications.states_at``)."""
    ids = sorted({e.marvel_id for e in events})
    first = min(e.seq for e in events)
    current = {
        int(row["marvel_id"]): load_json(row["data"])
        for row in _rows(
            conn,
            "SELECT marvel_id, data FROM character_reads WHERE marvel_id = ANY(%s::bigint[])",
            (ids,),
        )
    }
    streams = [f"character-{i}" for i in ids]
    later = [
        _event(row)
        for row in _rows(
            conn,
            "SELECT seq, id, type, correlation_id, created_at, occurred_at, data FROM events"
            " WHERE seq >= %s AND stream_id = ANY(%s::text[])"
            " ORDER BY seq DESC",
            (first, streams),
        )
    ]
    return states_at(current, later)


def saga_step(conn: psycopg.Connection, now: datetime, *, limit: int) -> SagaStep:
    """One step of the saga, in the caller's write transaction (see the module docstring),
    holding :data:`NOTIFY_LOCK` until it ends."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (NOTIFY_LOCK,))
    position = int(read_state(conn, POSITION) or 0)
    events = [
        _event(row)
        for row in _rows(
            conn,
            "SELECT seq, id, type, correlation_id, created_at, occurred_at, data FROM events"
            " WHERE seq > %s ORDER BY seq LIMIT %s",
            (position, limit),
        )
    ]
    if not events:
        return SagaStep(position=position, events=0)
    time_to_text(now)  # refuses a naive time, as SQLite's does when it writes one
    bootstrap = read_state(conn, BOOTSTRAP) or {}
    completed_text = bootstrap.get("completed_at") if isinstance(bootstrap, dict) else None
    completed = None if completed_text is None else text_to_time(completed_text)
    loud = [e for e in events if not silent(e, completed)]
    created: list[Notification] = []
    if loud:
        users = _recipients(conn)
        states = _states(conn, loud) if users else {}
        rows: list[tuple[str, str, str, str, int, int, datetime]] = []
        snapshots: list[tuple[int, str]] = []
        for event in loud:
            recipients = recipients_of(event, users)
            if not recipients:
                continue
            character = states.get(event.seq, {})
            snapshots.append((event.seq, dump_json(character)))
            message = message_for(event)
            for user_id in recipients:
                note = Notification(
                    id=str(uuid.uuid4()),
                    cursor=event.seq,
                    recipient_id=user_id,
                    type=event.type,
                    message=message,
                    event_id=event.id,
                    correlation_id=event.correlation_id,
                    occurred_at=event.occurred_at,
                    created_at=now,
                    marvel_id=event.marvel_id,
                    name=event.name,
                    character=character,
                    committed_at=event.created_at,
                )
                created.append(note)
                rows.append((note.id, note.type, message, user_id, event.seq, event.seq, now))
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
                rows,
            )
    last = events[-1].seq
    write_state(conn, {POSITION: last}, now)
    return SagaStep(
        position=last,
        events=len(events),
        notifications=tuple(created),
    )


_SELECT = (
    "SELECT n.id, n.cursor, n.recipient_id, n.type, n.message, n.created_at,"
    " e.id AS event_id, e.correlation_id, e.occurred_at, e.created_at AS committed_at,"
    " e.data, c.character"
    " FROM notifications AS n JOIN events AS e ON e.seq = n.event_seq"
    " LEFT JOIN notification_characters AS c ON c.event_seq = n.event_seq"
)


def _notification(row: dict[str, Any]) -> Notification:
    data = load_json(row["data"])
    return Notification(
        id=row["id"],
        cursor=int(row["cursor"]),
        recipient_id=row["recipient_id"],
        type=row["type"],
        message=row["message"],
        event_id=row["event_id"],
        correlation_id=row["correlation_id"] or "",
        occurred_at=_utc(row["occurred_at"]),
        created_at=_utc(row["created_at"]),
        marvel_id=int(data["marvel_id"]),
        name=str(data.get("name", "")),
        character=load_json(row["character"]) if row["character"] else {},
        committed_at=_utc(row["committed_at"]),
    )


def list_for(conn: psycopg.Connection, user_id: str, after: int, limit: int) -> NotificationPage:
    notes = tuple(
        _notification(row)
        for row in _rows(
            conn,
            _SELECT + " WHERE n.recipient_id = %s AND n.cursor > %s ORDER BY n.cursor LIMIT %s",
            (user_id, after, limit),
        )
    )
    return NotificationPage(
        notifications=notes,
        position=int(read_state(conn, POSITION) or 0),
        floor=int(read_state(conn, FLOOR) or 0),
    )


class PgNotificationRepo:
    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def step(self, now: datetime, *, limit: int) -> SagaStep:
        return await self._db.write(lambda conn: saga_step(conn, now, limit=limit))

    async def pending(self) -> bool:
        """Whether the log holds events past the notifier's position (a read, no lock)."""

        def check(conn: psycopg.Connection) -> bool:
            position = int(read_state(conn, POSITION) or 0)
            row = conn.execute("SELECT MAX(seq) FROM events").fetchone()
            return row is not None and row[0] is not None and int(row[0]) > position

        return await self._db.read(check, snapshot=True)

    async def page(self, user_id: str, *, after: int, limit: int) -> NotificationPage:
        return await self._db.read(
            lambda conn: list_for(conn, user_id, after, limit), snapshot=True
        )

    async def positions(self) -> tuple[int, int]:
        """(position, floor)."""

        def read(conn: psycopg.Connection) -> tuple[int, int]:
            return int(read_state(conn, POSITION) or 0), int(read_state(conn, FLOOR) or 0)

        return await self._db.read(read, snapshot=True)

    async def mark_sent(self, ids: Sequence[str], now: datetime) -> None:
        """``sent_at`` for those not sent before, in one transaction."""
        if not ids:
            return
        stamp = text_to_time(time_to_text(now))

        def update(conn: psycopg.Connection) -> None:
            conn.execute(
                "UPDATE notifications SET sent_at = %s"
                " WHERE id = ANY(%s::text[]) AND sent_at IS NULL",
                (stamp, list(ids)),
            )

        await self._db.write(update)

    async def sweep(self, before: datetime, now: datetime) -> int:
        """Delete notifications created before ``before``; raise the floor. Returns how many."""
        cut = text_to_time(time_to_text(before))

        def run(conn: psycopg.Connection) -> int:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (NOTIFY_LOCK,))
            row = conn.execute(
                "SELECT MAX(cursor), COUNT(*) FROM notifications WHERE created_at < %s", (cut,)
            ).fetchone()
            if row is None or not row[1]:
                return 0
            conn.execute("DELETE FROM notifications WHERE created_at < %s", (cut,))
            conn.execute(
                "DELETE FROM notification_characters WHERE event_seq <= %s AND event_seq NOT IN"
                " (SELECT event_seq FROM notifications WHERE event_seq <= %s)",
                (row[0], row[0]),
            )
            time_to_text(now)  # refuses a naive time, as SQLite's write_state does
            floor = max(int(read_state(conn, FLOOR) or 0), int(row[0]))
            write_state(conn, {FLOOR: floor}, now)
            return int(row[1])

        return await self._db.write(run)

    async def subscription(self, user_id: str) -> Filter:
        def read(conn: psycopg.Connection) -> Filter:
            row = conn.execute(
                "SELECT character_ids, name_prefix FROM notification_subscriptions"
                " WHERE user_id = %s",
                (user_id,),
            ).fetchone()
            if row is None:
                return Filter()
            return Filter(frozenset(int(i) for i in row[0]), row[1])

        return await self._db.read(read)

    async def set_subscription(self, user_id: str, value: Filter, now: datetime) -> None:
        stamp = text_to_time(time_to_text(now))

        def write(conn: psycopg.Connection) -> None:
            if value.everything:
                conn.execute(
                    "DELETE FROM notification_subscriptions WHERE user_id = %s", (user_id,)
                )
                return
            conn.execute(
                "INSERT INTO notification_subscriptions (user_id, character_ids, name_prefix,"
                " updated_at) VALUES (%s, %s::bigint[], %s, %s) ON CONFLICT (user_id) DO UPDATE"
                " SET character_ids = excluded.character_ids,"
                " name_prefix = excluded.name_prefix, updated_at = excluded.updated_at",
                (user_id, sorted(value.character_ids), value.name_prefix, stamp),
            )

        await self._db.write(write)
