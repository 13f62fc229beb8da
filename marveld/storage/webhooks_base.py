"""The ``webhook_deliveries`` table, backend-neutral: the delivery, its decoding, and the
repository whose statements each backend writes (marveld/storage/webhooks.py and its
PostgreSQL twin).

Each signed delivery is recorded once, pending until applied. A delivery is marked applied
by the backend's ``changes.apply_changes(..., delivery_id=...)``, in the transaction that
applies it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Generic, Protocol

from marveld.storage.coordination import Announcing, Signal
from marveld.storage.twins import Conn, Db, utc

# Applied deliveries are kept this long: a replay needs a fresh timestamp (5 minutes), so a
# day is ample to recognize the same delivery sent twice.
KEEP_APPLIED: Final = timedelta(days=1)
# The columns a delivery is read from (:func:`delivery_from_row`).
COLUMNS: Final = "id, type, ids, occurred_at, received_at"


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    type: str
    ids: tuple[int, ...]
    occurred_at: datetime | None
    received_at: datetime


class Row(Protocol):
    """A row of :data:`COLUMNS` by column name (``sqlite3.Row``, psycopg's ``dict_row``)."""

    def __getitem__(self, key: str, /) -> Any: ...


def delivery_from_row(
    row: Row,
    *,
    to_time: Callable[[Any], datetime],
    to_ids: Callable[[Any], Iterable[int]],
) -> Delivery:
    """The delivery of a row of :data:`COLUMNS`, with the backend's time and id-list decoding."""
    occurred_at = row["occurred_at"]
    return Delivery(
        id=row["id"],
        type=row["type"],
        ids=tuple(to_ids(row["ids"])),
        occurred_at=None if occurred_at is None else to_time(occurred_at),
        received_at=to_time(row["received_at"]),
    )


class WebhookRepoBase(Announcing, ABC, Generic[Conn]):
    """Deliveries by id. A backend gives its statements; times reach them in UTC
    (:func:`~marveld.storage.twins.utc`)."""

    def __init__(self, db: Db[Conn]) -> None:
        self._db = db

    @abstractmethod
    def _forget_applied(self, conn: Conn, before: datetime) -> None:
        """Delete the applied deliveries received before ``before``."""

    @abstractmethod
    def _insert(self, conn: Conn, delivery: Delivery) -> bool:
        """Insert the delivery unless its id is there; whether it was inserted."""

    @abstractmethod
    def _pending(self, conn: Conn, limit: int) -> list[Delivery]:
        """Up to ``limit`` deliveries not applied, by ``received_at`` then id (bytewise)."""

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
        stamp = utc(now)
        delivery = Delivery(
            id=delivery_id,
            type=kind,
            ids=tuple(ids),
            occurred_at=None if occurred_at is None else utc(occurred_at),
            received_at=stamp,
        )

        def insert(conn: Conn) -> bool:
            self._forget_applied(conn, stamp - KEEP_APPLIED)
            new = self._insert(conn, delivery)
            if new:
                self._announce(conn, Signal(webhook=True))  # the leader's worker applies it
            return new

        return await self._db.write(insert)

    async def pending(self, limit: int = 100) -> list[Delivery]:
        """Deliveries not applied yet, oldest first."""
        return await self._db.read(lambda conn: self._pending(conn, limit))
