"""What the SQLite and PostgreSQL repositories share: the database they run on, seen
through the two calls they use, and the one time normalisation both apply.

A backend-neutral repository (``*_base.py``) holds a :class:`Db` of its backend's
connection type and leaves only the SQL to its two subclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol, TypeVar

from marveld.storage.codec import text_to_time, time_to_text

T = TypeVar("T")
Conn = TypeVar("Conn")
Conn_co = TypeVar("Conn_co", covariant=True)


class Db(Protocol[Conn_co]):
    """A :class:`~marveld.storage.database.Database` or a ``PgDatabase``: runs functions
    of one connection, writes in one transaction each."""

    async def read(self, fn: Callable[[Conn_co], T], *, snapshot: bool = False) -> T: ...

    async def write(self, fn: Callable[[Conn_co], T]) -> T: ...


def utc(value: datetime) -> datetime:
    """``value`` in UTC, at the stored precision (microseconds); ValueError for a naive
    time, before any statement runs, on either backend."""
    return text_to_time(time_to_text(value))
