"""The ``notifications`` table and the saga's step over the event log, backend-neutral:
the saga, cursors, retention and subscriptions, whose statements each backend writes
(marveld/storage/notifications.py and its PostgreSQL twin).

The saga's step is one write transaction: read the events after the notifier's position
(``sync_state`` key ``notify.position``), write the notifications they cause and the
character as of each, and move the position past them, all or none, so a crash neither
skips nor repeats an event. The cursor of a notification is its event's ``seq``.

Retention: :meth:`NotificationRepoBase.sweep` deletes notifications older than a time and
raises ``notify.floor`` (the newest cursor it deleted) in the same transaction; a client
resuming after a cursor below the floor may have missed deleted ones.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Generic, Protocol

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
from marveld.storage.codec import dump_json, load_json, text_to_time
from marveld.storage.coordination import Announcing, Signal
from marveld.storage.sync_state_base import BOOTSTRAP
from marveld.storage.twins import Conn, Db, utc

POSITION: Final = "notify.position"
FLOOR: Final = "notify.floor"

# The columns an event is read from (:func:`logged_event`).
EVENT_COLUMNS: Final = "seq, id, type, correlation_id, created_at, occurred_at, data"
# A notification with its event and character (:func:`notification_from_row`); each
# backend adds its WHERE clause.
SELECT_NOTIFICATIONS: Final = (
    "SELECT n.id, n.cursor, n.recipient_id, n.type, n.message, n.created_at,"
    " e.id AS event_id, e.correlation_id, e.occurred_at, e.created_at AS committed_at,"
    " e.data, c.character"
    " FROM notifications AS n JOIN events AS e ON e.seq = n.event_seq"
    " LEFT JOIN notification_characters AS c ON c.event_seq = n.event_seq"
)
# Each active user with its subscription, if any (:func:`recipient`).
SELECT_RECIPIENTS: Final = (
    "SELECT users.id, users.created_at, s.character_ids AS ids, s.name_prefix AS prefix"
    " FROM users LEFT JOIN notification_subscriptions AS s ON s.user_id = users.id"
    " WHERE users.deleted_at IS NULL"
)


@dataclass(frozen=True, slots=True)
class SagaStep:
    """What one step did: the position it reached, the events it read, what it wrote."""

    position: int
    events: int
    notifications: tuple[Notification, ...] = ()


@dataclass(frozen=True, slots=True)
class Feed:
    """Every user's notifications with a cursor in (after, ``upto``]; ``position`` is the
    saga's, in the same snapshot (more may be read when ``upto`` is below it)."""

    notifications: tuple[Notification, ...]
    upto: int
    position: int


@dataclass(frozen=True, slots=True)
class NotificationPage:
    notifications: tuple[Notification, ...]
    position: int  # the notifier's position in the same snapshot
    floor: int  # the newest cursor retention deleted


class Row(Protocol):
    """A row by column name (``sqlite3.Row``, psycopg's ``dict_row``)."""

    def __getitem__(self, key: str, /) -> Any: ...


ToTime = Callable[[Any], datetime]
ToIds = Callable[[Any], Iterable[int]]


def logged_event(row: Row, *, to_time: ToTime) -> LoggedEvent:
    """The event of a row of :data:`EVENT_COLUMNS`, with the backend's time decoding."""
    return LoggedEvent(
        seq=int(row["seq"]),
        id=row["id"],
        type=row["type"],
        correlation_id=row["correlation_id"] or "",
        created_at=to_time(row["created_at"]),
        occurred_at=to_time(row["occurred_at"]),
        data=load_json(row["data"]),
    )


def recipient(row: Row, *, to_time: ToTime, to_ids: ToIds) -> Recipient:
    """A user of :data:`SELECT_RECIPIENTS`; no subscription row is every character."""
    ids = row["ids"]
    return Recipient(
        user_id=row["id"],
        created_at=to_time(row["created_at"]),
        filter=Filter(frozenset(to_ids(ids) if ids else ()), row["prefix"] or ""),
    )


def notification_from_row(row: Row, *, to_time: ToTime) -> Notification:
    """A notification of :data:`SELECT_NOTIFICATIONS`, with the backend's time decoding."""
    data = load_json(row["data"])
    return Notification(
        id=row["id"],
        cursor=int(row["cursor"]),
        recipient_id=row["recipient_id"],
        type=row["type"],
        message=row["message"],
        event_id=row["event_id"],
        correlation_id=row["correlation_id"] or "",
        occurred_at=to_time(row["occurred_at"]),
        created_at=to_time(row["created_at"]),
        marvel_id=int(data["marvel_id"]),
        name=str(data.get("name", "")),
        character=load_json(row["character"]) if row["character"] else {},
        committed_at=to_time(row["committed_at"]),
    )


def notify(
    events: Sequence[LoggedEvent],
    users: Sequence[Recipient],
    states: Mapping[int, dict[str, object]],
    now: datetime,
) -> tuple[list[Notification], list[tuple[int, dict[str, object]]]]:
    """The notifications ``events`` cause for ``users``, and the character as of each
    event that caused one (by ``seq``, to store once)."""
    created: list[Notification] = []
    snapshots: list[tuple[int, dict[str, object]]] = []
    for event in events:
        recipients = recipients_of(event, users)
        if not recipients:
            continue
        character = states.get(event.seq, {})
        snapshots.append((event.seq, character))
        message = message_for(event)
        for user_id in recipients:
            created.append(
                Notification(
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
            )
    return created, snapshots


class NotificationRepoBase(Announcing, ABC, Generic[Conn]):
    """The saga's step, pages by cursor, retention and subscriptions.

    A backend gives its ``sync_state`` access, its value decoding (``_to_time``,
    ``_to_ids``), its lock and its statements. Times reach the statements in UTC
    (:func:`~marveld.storage.twins.utc`), except the saga step's ``now``, passed as given
    (it is the notifications' ``created_at``)."""

    def __init__(self, db: Db[Conn]) -> None:
        self._db = db

    @abstractmethod
    def _read_state(self, conn: Conn, key: str) -> Any: ...

    @abstractmethod
    def _write_state(self, conn: Conn, values: Mapping[str, Any], now: datetime) -> None: ...

    @abstractmethod
    def _to_time(self, value: Any, /) -> datetime: ...

    @abstractmethod
    def _to_ids(self, value: Any, /) -> Iterable[int]: ...

    @abstractmethod
    def _lock(self, conn: Conn) -> None:
        """Serialise saga steps and sweeps until the transaction ends, if the backend has
        more than one writer."""

    @abstractmethod
    def _events_after(self, conn: Conn, position: int, limit: int) -> Iterable[Row]:
        """Up to ``limit`` events of :data:`EVENT_COLUMNS` with ``seq > position``, by seq."""

    @abstractmethod
    def _recipient_rows(self, conn: Conn) -> Iterable[Row]: ...

    @abstractmethod
    def _character_rows(self, conn: Conn, ids: list[int]) -> Iterable[Row]:
        """``marvel_id, data`` of the read table's rows for ``ids``."""

    @abstractmethod
    def _stream_events(self, conn: Conn, first: int, streams: list[str]) -> Iterable[Row]:
        """Events of :data:`EVENT_COLUMNS` in ``streams`` with ``seq >= first``, newest first."""

    @abstractmethod
    def _insert(
        self,
        conn: Conn,
        snapshots: list[tuple[int, str]],
        notes: Sequence[Notification],
        now: datetime,
    ) -> None:
        """Store the characters (``event_seq``, JSON) and the notifications, created at
        ``now``; rows already there are kept."""

    @abstractmethod
    def _page_rows(self, conn: Conn, user_id: str, after: int, limit: int) -> Iterable[Row]:
        """Rows of :data:`SELECT_NOTIFICATIONS` for ``user_id`` after ``after``, by cursor."""

    @abstractmethod
    def _feed_rows(self, conn: Conn, after: int, upto: int, limit: int | None) -> Iterable[Row]:
        """Up to ``limit`` (None: all) rows of :data:`SELECT_NOTIFICATIONS`, every user's,
        with ``after < cursor <= upto``, by cursor."""

    @abstractmethod
    def _max_seq(self, conn: Conn) -> int | None: ...

    @abstractmethod
    def _mark_sent(self, conn: Conn, ids: list[str], now: datetime) -> None: ...

    @abstractmethod
    def _expired(self, conn: Conn, before: datetime) -> tuple[int | None, int]:
        """``MAX(cursor), COUNT(*)`` of the notifications created before ``before``."""

    @abstractmethod
    def _delete_expired(self, conn: Conn, before: datetime, newest: int) -> None:
        """Delete those, and the characters up to ``newest`` no notification refers to."""

    @abstractmethod
    def _subscription_row(self, conn: Conn, user_id: str) -> tuple[Any, str] | None:
        """``character_ids, name_prefix`` of the user's subscription."""

    @abstractmethod
    def _delete_subscription(self, conn: Conn, user_id: str) -> None: ...

    @abstractmethod
    def _upsert_subscription(
        self, conn: Conn, user_id: str, ids: list[int], prefix: str, now: datetime
    ) -> None: ...

    def _position(self, conn: Conn) -> int:
        return int(self._read_state(conn, POSITION) or 0)

    def _floor(self, conn: Conn) -> int:
        return int(self._read_state(conn, FLOOR) or 0)

    def _event(self, row: Row) -> LoggedEvent:
        return logged_event(row, to_time=self._to_time)

    def _states(self, conn: Conn, events: Sequence[LoggedEvent]) -> dict[int, dict[str, object]]:
        """The character as of each of ``events`` (see ``domain.notifications.states_at``)."""
        ids = sorted({e.marvel_id for e in events})
        first = min(e.seq for e in events)
        current = {
            int(row["marvel_id"]): load_json(row["data"]) for row in self._character_rows(conn, ids)
        }
        streams = [f"character-{i}" for i in ids]
        later = [self._event(row) for row in self._stream_events(conn, first, streams)]
        return states_at(current, later)

    def _saga_step(self, conn: Conn, now: datetime, *, limit: int) -> SagaStep:
        """One step of the saga, in the caller's write transaction (see the module docstring)."""
        self._lock(conn)
        position = self._position(conn)
        events = [self._event(row) for row in self._events_after(conn, position, limit)]
        if not events:
            return SagaStep(position=position, events=0)
        utc(now)  # refuses a naive time before anything is written
        bootstrap = self._read_state(conn, BOOTSTRAP) or {}
        completed_text = bootstrap.get("completed_at") if isinstance(bootstrap, dict) else None
        completed = None if completed_text is None else text_to_time(completed_text)
        loud = [e for e in events if not silent(e, completed)]
        created: list[Notification] = []
        if loud:
            users = [
                recipient(row, to_time=self._to_time, to_ids=self._to_ids)
                for row in self._recipient_rows(conn)
            ]
            states = self._states(conn, loud) if users else {}
            created, snapshots = notify(loud, users, states, now)
            self._insert(conn, [(seq, dump_json(c)) for seq, c in snapshots], created, now)
        last = events[-1].seq
        self._write_state(conn, {POSITION: last}, now)
        self._announce(conn, Signal(position=last))  # every replica feeds its own subscribers
        return SagaStep(position=last, events=len(events), notifications=tuple(created))

    async def step(self, now: datetime, *, limit: int) -> SagaStep:
        return await self._db.write(lambda conn: self._saga_step(conn, now, limit=limit))

    async def pending(self) -> bool:
        """Whether the log holds events past the notifier's position (a read, no lock)."""

        def check(conn: Conn) -> bool:
            position = self._position(conn)
            newest = self._max_seq(conn)
            return newest is not None and newest > position

        return await self._db.read(check, snapshot=True)

    async def page(self, user_id: str, *, after: int, limit: int) -> NotificationPage:
        def read(conn: Conn) -> NotificationPage:
            notes = tuple(
                notification_from_row(row, to_time=self._to_time)
                for row in self._page_rows(conn, user_id, after, limit)
            )
            return NotificationPage(
                notifications=notes, position=self._position(conn), floor=self._floor(conn)
            )

        return await self._db.read(read, snapshot=True)

    async def feed(self, *, after: int, limit: int) -> Feed:
        """What the saga wrote after cursor ``after``, about ``limit`` notifications of it
        at most (whole cursors: more when one cursor alone holds more): how a replica
        learns of the notifications any replica's saga wrote."""

        def read(conn: Conn) -> Feed:
            position = self._position(conn)
            if position <= after:
                return Feed((), after, position)
            rows = list(self._feed_rows(conn, after, position, limit + 1))
            upto = position
            if len(rows) > limit:  # the last cursor read may be cut: leave it for next time
                upto = int(rows[-1]["cursor"]) - 1
                rows = [row for row in rows if int(row["cursor"]) <= upto]
                if not rows:  # one cursor holds more than the limit: read it whole
                    upto += 1
                    rows = list(self._feed_rows(conn, upto - 1, upto, None))
            notes = tuple(notification_from_row(row, to_time=self._to_time) for row in rows)
            return Feed(notes, upto, position)

        return await self._db.read(read, snapshot=True)

    async def positions(self) -> tuple[int, int]:
        """(position, floor)."""
        return await self._db.read(
            lambda conn: (self._position(conn), self._floor(conn)), snapshot=True
        )

    async def mark_sent(self, ids: Sequence[str], now: datetime) -> None:
        """``sent_at`` for those not sent before, in one transaction."""
        if not ids:
            return
        stamp = utc(now)
        await self._db.write(lambda conn: self._mark_sent(conn, list(ids), stamp))

    async def sweep(self, before: datetime, now: datetime) -> int:
        """Delete notifications created before ``before``; raise the floor. Returns how many."""
        cut = utc(before)

        def run(conn: Conn) -> int:
            self._lock(conn)
            newest, count = self._expired(conn, cut)
            if not count or newest is None:
                return 0
            self._delete_expired(conn, cut, newest)
            utc(now)  # refuses a naive time before the floor is written
            floor = max(self._floor(conn), int(newest))
            self._write_state(conn, {FLOOR: floor}, now)
            return int(count)

        return await self._db.write(run)

    async def subscription(self, user_id: str) -> Filter:
        def read(conn: Conn) -> Filter:
            row = self._subscription_row(conn, user_id)
            if row is None:
                return Filter()
            return Filter(frozenset(self._to_ids(row[0])), row[1])

        return await self._db.read(read)

    async def set_subscription(self, user_id: str, value: Filter, now: datetime) -> None:
        stamp = utc(now)

        def write(conn: Conn) -> None:
            if value.everything:
                self._delete_subscription(conn, user_id)
                return
            ids = sorted(value.character_ids)
            self._upsert_subscription(conn, user_id, ids, value.name_prefix, stamp)

        await self._db.write(write)
