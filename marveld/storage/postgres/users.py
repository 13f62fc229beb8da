"""The ``users`` table on PostgreSQL (twin of marveld/storage/users.py).

Differences from SQLite, and why:

- emails are compared as ``lower(email) = lower(%s)``: the unique index is on
  ``lower(email)`` (SQLite: a ``COLLATE NOCASE`` column); the services store them
  lower-cased already (``normalize_email``), so both fold the same addresses;
- a taken email is the ``users_email`` unique violation (SQLite: an IntegrityError naming
  ``users.email``), turned into the same AlreadyExists;
- times are ``timestamptz``, read back as aware datetimes and normalised to UTC.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from marveld.domain.errors import AlreadyExists, NotFound
from marveld.domain.users import User, check_role
from marveld.storage.codec import text_to_time, time_to_text
from marveld.storage.postgres.database import PgDatabase

log = logging.getLogger(__name__)

ROLES = ("user", "admin")
_COLUMNS = "id, name, email, password, role, created_at, updated_at, deleted_at"
_EMAIL_INDEX = "users_email"


def _user(row: dict[str, Any]) -> User:
    deleted_at: datetime | None = row["deleted_at"]
    return User(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        password_hash=row["password"],
        created_at=row["created_at"].astimezone(UTC),
        updated_at=row["updated_at"].astimezone(UTC),
        deleted_at=None if deleted_at is None else deleted_at.astimezone(UTC),
        role=row["role"],
    )


def _one(conn: psycopg.Connection, sql: str, params: tuple[Any, ...]) -> User | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(sql, params).fetchone()
    return None if row is None else _user(row)


class PgUserRepo:
    """Accounts. Emails are unique case-insensitively; soft-deleted users stay readable."""

    def __init__(self, db: PgDatabase) -> None:
        self._db = db

    async def create(self, *, name: str, email: str, password_hash: str, now: datetime) -> User:
        """A new user with a fresh uuid4 id; AlreadyExists when the email is taken in any case."""
        stamp = text_to_time(time_to_text(now))  # refuses naive times, as SQLite's does
        user = User(
            id=str(uuid.uuid4()),
            name=name,
            email=email,
            password_hash=password_hash,
            created_at=stamp,
            updated_at=stamp,
        )

        def insert(conn: psycopg.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO users (id, name, email, password, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (user.id, user.name, user.email, user.password_hash, stamp, stamp),
                )
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name == _EMAIL_INDEX:
                    raise AlreadyExists("email is already registered") from None
                raise

        await self._db.write(insert)
        log.debug("user %s created", user.id)
        return user

    async def by_email(self, email: str) -> User | None:
        """The user with this email in any case, soft-deleted ones included."""

        def select(conn: psycopg.Connection) -> User | None:
            return _one(
                conn, f"SELECT {_COLUMNS} FROM users WHERE lower(email) = lower(%s)", (email,)
            )

        return await self._db.read(select)

    async def by_id(self, user_id: str) -> User | None:
        def select(conn: psycopg.Connection) -> User | None:
            return _one(conn, f"SELECT {_COLUMNS} FROM users WHERE id = %s", (user_id,))

        return await self._db.read(select)

    async def set_password_hash(self, user_id: str, password_hash: str, now: datetime) -> None:
        """Replace the stored hash (e.g. a rehash with new parameters); NotFound for an
        unknown id."""
        stamp = text_to_time(time_to_text(now))

        def update(conn: psycopg.Connection) -> int:
            cursor = conn.execute(
                "UPDATE users SET password = %s, updated_at = %s WHERE id = %s",
                (password_hash, stamp, user_id),
            )
            return cursor.rowcount

        if await self._db.write(update) == 0:
            raise NotFound(f"no user with id {user_id}")

    async def set_role(self, email: str, role: str, now: datetime) -> User:
        """Give the (not deleted) user with this email, in any case, ``role``; NotFound when
        there is none, InvalidArgument for a role that is not one."""
        check_role(role)
        stamp = text_to_time(time_to_text(now))

        def update(conn: psycopg.Connection) -> User | None:
            return _one(
                conn,
                "UPDATE users SET role = %s, updated_at = %s"
                " WHERE lower(email) = lower(%s) AND deleted_at IS NULL"
                f" RETURNING {_COLUMNS}",
                (role, stamp, email),
            )

        user = await self._db.write(update)
        if user is None:
            raise NotFound("no user with this email")
        log.info("user %s is now %s", user.id, role)
        return user

    async def soft_delete(self, user_id: str, now: datetime) -> None:
        """Mark the user deleted: kept for the record, but no login and no token works."""
        stamp = text_to_time(time_to_text(now))

        def update(conn: psycopg.Connection) -> int:
            cursor = conn.execute(
                "UPDATE users SET deleted_at = %s, updated_at = %s"
                " WHERE id = %s AND deleted_at IS NULL",
                (stamp, stamp, user_id),
            )
            return cursor.rowcount

        if await self._db.write(update) == 0:
            raise NotFound(f"no user with id {user_id}")
        log.info("user %s deleted", user_id)
