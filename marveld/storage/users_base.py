"""The ``users`` table, backend-neutral: row decoding and the repository whose
statements each backend writes (marveld/storage/users.py and its PostgreSQL twin).

Accounts. Emails are unique case-insensitively; soft-deleted users stay readable.
"""

from __future__ import annotations

import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, Generic, Protocol

from marveld.domain.errors import NotFound
from marveld.domain.users import User, check_role
from marveld.storage.twins import Conn, Db, utc

COLUMNS: Final = "id, name, email, password, role, created_at, updated_at, deleted_at"
# What AlreadyExists says when a backend's unique index on the email refuses a row.
EMAIL_TAKEN: Final = "email is already registered"


class Row(Protocol):
    """A row of :data:`COLUMNS` by column name (``sqlite3.Row``, psycopg's ``dict_row``)."""

    def __getitem__(self, key: str, /) -> Any: ...


def user_from_row(row: Row, *, to_time: Callable[[Any], datetime]) -> User:
    """The user of a row of :data:`COLUMNS`, with the backend's time decoding."""
    deleted_at = row["deleted_at"]
    return User(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        password_hash=row["password"],
        created_at=to_time(row["created_at"]),
        updated_at=to_time(row["updated_at"]),
        deleted_at=None if deleted_at is None else to_time(deleted_at),
        role=row["role"],
    )


class UserRepoBase(ABC, Generic[Conn]):
    """Accounts. Emails are unique case-insensitively; soft-deleted users stay readable.

    A backend gives the statements; times reach them in UTC
    (:func:`~marveld.storage.twins.utc`), and an update's hook returns how many rows it
    changed (or the changed user), from which this class raises NotFound."""

    def __init__(self, db: Db[Conn]) -> None:
        self._db = db
        self._log = logging.getLogger(type(self).__module__)  # the backend's logger

    @abstractmethod
    def _insert(self, conn: Conn, user: User) -> None:
        """Insert ``user``; AlreadyExists(:data:`EMAIL_TAKEN`) when the email is taken."""

    @abstractmethod
    def _by_email(self, conn: Conn, email: str) -> User | None: ...

    @abstractmethod
    def _by_id(self, conn: Conn, user_id: str) -> User | None: ...

    @abstractmethod
    def _set_password_hash(
        self, conn: Conn, user_id: str, password_hash: str, now: datetime
    ) -> int: ...

    @abstractmethod
    def _set_role(self, conn: Conn, email: str, role: str, now: datetime) -> User | None:
        """Set the role of the not deleted user with this email, in any case."""

    @abstractmethod
    def _soft_delete(self, conn: Conn, user_id: str, now: datetime) -> int: ...

    async def create(self, *, name: str, email: str, password_hash: str, now: datetime) -> User:
        """A new user with a fresh uuid4 id; AlreadyExists when the email is taken in any case."""
        stamp = utc(now)
        user = User(
            id=str(uuid.uuid4()),
            name=name,
            email=email,
            password_hash=password_hash,
            created_at=stamp,
            updated_at=stamp,
        )
        await self._db.write(lambda conn: self._insert(conn, user))
        self._log.debug("user %s created", user.id)
        return user

    async def by_email(self, email: str) -> User | None:
        """The user with this email in any case, soft-deleted ones included."""
        return await self._db.read(lambda conn: self._by_email(conn, email))

    async def by_id(self, user_id: str) -> User | None:
        return await self._db.read(lambda conn: self._by_id(conn, user_id))

    async def set_password_hash(self, user_id: str, password_hash: str, now: datetime) -> None:
        """Replace the stored hash (e.g. a rehash with new parameters); NotFound for an
        unknown id."""
        stamp = utc(now)
        updated = await self._db.write(
            lambda conn: self._set_password_hash(conn, user_id, password_hash, stamp)
        )
        if updated == 0:
            raise NotFound(f"no user with id {user_id}")

    async def set_role(self, email: str, role: str, now: datetime) -> User:
        """Give the (not deleted) user with this email, in any case, ``role``; NotFound when
        there is none, InvalidArgument for a role that is not one."""
        check_role(role)
        stamp = utc(now)
        user = await self._db.write(lambda conn: self._set_role(conn, email, role, stamp))
        if user is None:
            raise NotFound("no user with this email")
        self._log.info("user %s is now %s", user.id, role)
        return user

    async def soft_delete(self, user_id: str, now: datetime) -> None:
        """Mark the user deleted: kept for the record, but no login and no token works."""
        stamp = utc(now)
        if await self._db.write(lambda conn: self._soft_delete(conn, user_id, stamp)) == 0:
            raise NotFound(f"no user with id {user_id}")
        self._log.info("user %s deleted", user_id)
