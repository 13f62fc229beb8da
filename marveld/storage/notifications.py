"""The ``notifications`` table and the saga's step over the event log.

:func:`saga_step` is one write transaction: read the events after the notifier's position
(``sync_state`` key ``notify.position``), write the notifications they cause and the
character as of each, and move the position past them, all or none, so a crash neither
skips nor repeats an event. The cursor of a notification is its event's ``seq``.

Retention: :meth:`NotificationRepo.sweep` deletes notifications older than a time and
raises ``notify.floor`` (the newest cursor it deleted) in the same transaction; a client
resuming after a cursor below the floor may have missed deleted ones.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

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
from marveld.storage.database import Database
from marveld.storage.sync_state import BOOTSTRAP, read_state, write_state

log = logging.getLogger(__name__)

POSITION: Final = "notify.position"
FLOOR: Final = "notify.floor"


@dataclass(frozen=True, slots=True)
class SagaStep:
    """What one step did: the position it reached, the events it read, what it wrote."""

    position: int
    events: int
    notifications: tuple[Notification, ...] = ()


@dataclass(frozen=True, slots=True)
class NotificationPage:
    notifications: tuple[Notification, ...]
    position: int  # the notifier's position in the same snapshot
    floor: int  # the newest cursor retention deleted


def _event(row: sqlite3.Row) -> LoggedEvent:
    return LoggedEvent(
        seq=row["seq"],
        id=row["id"],
        type=row["type"],
        correlation_id=row["correlation_id"] or "",
        created_at=text_to_time(row["created_at"]),
        occurred_at=text_to_time(row["occurred_at"]),
        data=load_json(row["data"]),
    )


def _recipients(conn: sqlite3.Connection) -> list[Recipient]:
    return [
        Recipient(
            user_id=row["id"],
            created_at=text_to_time(row["created_at"]),
            filter=Filter(frozenset(load_json(row["ids"] or "[]")), row["prefix"] or ""),
        )
        for row in conn.execute(
            "SELECT users.id, users.created_at, s.character_ids AS ids, s.name_prefix AS prefix"
            " FROM users LEFT JOIN notification_subscriptions AS s ON s.user_id = users.id"
            " WHERE users.deleted_at IS NULL"
        )
    ]


def _states(
    conn: sqlite3.Connection, events: Sequence[LoggedEvent]
) -> dict[int, dict[str, object]]:
    """The character as of each of ``events`` (see ``domain.notifications.states_at``)."""
    ids = sorted({e.marvel_id for e in events})
    first = min(e.seq for e in events)
    current = {
        row["marvel_id"]: load_json(row["data"])
        for row in conn.execute(
            "SELECT marvel_id, data FROM character_reads"
            " WHERE marvel_id IN (SELECT value FROM json_each(?))",
            (dump_json(ids),),
        )
    }
    streams = [f"character-{i}" for i in ids]
    later = [
        _event(row)
        for row in conn.execute(
            "SELECT seq, id, type, correlation_id, created_at, occurred_at, data FROM events"
            " WHERE seq >= ? AND stream_id IN (SELECT value FROM json_each(?))"
            " ORDER BY seq DESC",
            (first, dump_json(streams)),
        )
    ]
    return states_at(current, later)


def saga_step(conn: sqlite3.Connection, now: datetime, *, limit: int) -> SagaStep:
    """One step of the saga, in the caller's write transaction (see the module docstring)."""
    position = int(read_state(conn, POSITION) or 0)
    events = [
        _event(row)
        for row in conn.execute(
            "SELECT seq, id, type, correlation_id, created_at, occurred_at, data FROM events"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (position, limit),
        )
    ]
    if not events:
        return SagaStep(position=position, events=0)
    bootstrap = read_state(conn, BOOTSTRAP) or {}
    completed_text = bootstrap.get("completed_at") if isinstance(bootstrap, dict) else None
    completed = None if completed_text is None else text_to_time(completed_text)
    loud = [e for e in events if not silent(e, completed)]
    created: list[Notification] = []
    if loud:
        users = _recipients(conn)
        states = _states(conn, loud) if users else {}
        stamp = time_to_text(now)
        rows: list[tuple[str, str, str, str, int, int, str]] = []
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
                rows.append((note.id, note.type, message, user_id, event.seq, event.seq, stamp))
        conn.executemany(
            "INSERT OR IGNORE INTO notification_characters (event_seq, character) VALUES (?, ?)",
            snapshots,
        )
        conn.executemany(
            "INSERT OR IGNORE INTO notifications (id, type, message, recipient_id, event_seq,"
            " cursor, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
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


def _notification(row: sqlite3.Row) -> Notification:
    data = load_json(row["data"])
    return Notification(
        id=row["id"],
        cursor=row["cursor"],
        recipient_id=row["recipient_id"],
        type=row["type"],
        message=row["message"],
        event_id=row["event_id"],
        correlation_id=row["correlation_id"] or "",
        occurred_at=text_to_time(row["occurred_at"]),
        created_at=text_to_time(row["created_at"]),
        marvel_id=int(data["marvel_id"]),
        name=str(data.get("name", "")),
        character=load_json(row["character"]) if row["character"] else {},
        committed_at=text_to_time(row["committed_at"]),
    )


def list_for(conn: sqlite3.Connection, user_id: str, after: int, limit: int) -> NotificationPage:
    notes = tuple(
        _notification(row)
        for row in conn.execute(
            _SELECT + " WHERE n.recipient_id = ? AND n.cursor > ? ORDER BY n.cursor LIMIT ?",
            (user_id, after, limit),
        )
    )
    return NotificationPage(
        notifications=notes,
        position=int(read_state(conn, POSITION) or 0),
        floor=int(read_state(conn, FLOOR) or 0),
    )


class NotificationRepo:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def step(self, now: datetime, *, limit: int) -> SagaStep:
        return await self._db.write(lambda conn: saga_step(conn, now, limit=limit))

    async def pending(self) -> bool:
        """Whether the log holds events past the notifier's position (a read, no lock)."""

        def check(conn: sqlite3.Connection) -> bool:
            position = int(read_state(conn, POSITION) or 0)
            row = conn.execute("SELECT MAX(seq) FROM events").fetchone()
            return row[0] is not None and int(row[0]) > position

        return await self._db.read(check, snapshot=True)

    async def page(self, user_id: str, *, after: int, limit: int) -> NotificationPage:
        return await self._db.read(
            lambda conn: list_for(conn, user_id, after, limit), snapshot=True
        )

    async def positions(self) -> tuple[int, int]:
        """(position, floor)."""

        def read(conn: sqlite3.Connection) -> tuple[int, int]:
            return int(read_state(conn, POSITION) or 0), int(read_state(conn, FLOOR) or 0)

        return await self._db.read(read, snapshot=True)

    async def mark_sent(self, ids: Sequence[str], now: datetime) -> None:
        """``sent_at`` for those not sent before, in one transaction."""
        if not ids:
            return
        stamp = time_to_text(now)
        await self._db.write(
            lambda conn: conn.execute(
                "UPDATE notifications SET sent_at = ?"
                " WHERE id IN (SELECT value FROM json_each(?)) AND sent_at IS NULL",
                (stamp, dump_json(list(ids))),
            )
        )

    async def sweep(self, before: datetime, now: datetime) -> int:
        """Delete notifications created before ``before``; raise the floor. Returns how many."""

        def run(conn: sqlite3.Connection) -> int:
            cut = time_to_text(before)
            row = conn.execute(
                "SELECT MAX(cursor), COUNT(*) FROM notifications WHERE created_at < ?", (cut,)
            ).fetchone()
            if not row[1]:
                return 0
            conn.execute("DELETE FROM notifications WHERE created_at < ?", (cut,))
            conn.execute(
                "DELETE FROM notification_characters WHERE event_seq <= ? AND event_seq NOT IN"
                " (SELECT event_seq FROM notifications WHERE event_seq <= ?)",
                (row[0], row[0]),
            )
            floor = max(int(read_state(conn, FLOOR) or 0), int(row[0]))
            write_state(conn, {FLOOR: floor}, now)
            return int(row[1])

        return await self._db.write(run)

    async def subscription(self, user_id: str) -> Filter:
        def read(conn: sqlite3.Connection) -> Filter:
            row = conn.execute(
                "SELECT character_ids, name_prefix FROM notification_subscriptions"
                " WHERE user_id = ?",
                (user_id,),
            ).fetchone()
            if row is None:
                return Filter()
            return Filter(frozenset(load_json(row[0])), row[1])

        return await self._db.read(read)

    async def set_subscription(self, user_id: str, value: Filter, now: datetime) -> None:
        def write(conn: sqlite3.Connection) -> None:
            if value.everything:
                conn.execute("DELETE FROM notification_subscriptions WHERE user_id = ?", (user_id,))
                return
            conn.execute(
                "INSERT INTO notification_subscriptions (user_id, character_ids, name_prefix,"
                " updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
                " character_ids = excluded.character_ids, name_prefix = excluded.name_prefix,"
                " updated_at = excluded.updated_at",
                (
                    user_id,
                    dump_json(sorted(value.character_ids)),
                    value.name_prefix,
                    time_to_text(now),
                ),
            )

        await self._db.write(write)
