"""The ``users`` table."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from datetime import datetime

from marveld.domain.errors import AlreadyExists, NotFound
from marveld.domain.users import User, check_role
from marveld.storage.codec import optional_text_to_time, text_to_time, time_to_text
from marveld.storage.database import Database

log = logging.getLogger(__name__)

ROLES = ("user", "admin")
_COLUMNS = "id, name, email, password, role, created_at, updated_at, deleted_at"


def _user(row: sqlite3.Row) -> User:
    return User(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        password_hash=row["password"],
        created_at=text_to_time(row["created_at"]),
        updated_at=text_to_time(row["updated_at"]),
        deleted_at=optional_text_to_time(row["deleted_at"]),
        role=row["role"],
    )


class UserRepo:
    """Accounts. Emails are unique case-insensitively; soft-deleted users stay readable."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, *, name: str, email: str, password_hash: str, now: datetime) -> User:
        """A new user with a fresh uuid4 id; AlreadyExists when the email is taken in any case."""
        stamp = time_to_text(now)
        user = User(
            id=str(uuid.uuid4()),
            name=name,
            email=email,
            password_hash=password_hash,
            created_at=text_to_time(stamp),
            updated_at=text_to_time(stamp),
        )

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO users (id, name, email, password, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (user.id, user.name, user.email, user.password_hash, stamp, stamp),
                )
            except sqlite3.IntegrityError as exc:
                if "users.email" in str(exc):
                    raise AlreadyExists("email is already registered") from None
                raise

        await self._db.write(insert)
        log.debug("user %s created", user.id)
        return user

    async def by_email(self, email: str) -> User | None:
        """The user with this email in any case, soft-deleted ones included."""

        def select(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM users WHERE email = ?", (email,)).fetchone()
            return None if row is None else _user(row)

        return await self._db.read(select)

    async def by_id(self, user_id: str) -> User | None:
        def select(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
            return None if row is None else _user(row)

        return await self._db.read(select)

    async def set_password_hash(self, user_id: str, password_hash: str, now: datetime) -> None:
        """Replace the stored hash (e.g. a rehash with new parameters); NotFound for an
        unknown id."""
        stamp = time_to_text(now)

        def update(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE users SET password = ?, updated_at = ? WHERE id = ?",
                (password_hash, stamp, user_id),
            )
            return cursor.rowcount

        if await self._db.write(update) == 0:
            raise NotFound(f"no user with id {user_id}")

    async def set_role(self, email: str, role: str, now: datetime) -> User:
        """Give the (not deleted) user with this email, in any case, ``role``; NotFound when
        there is none, InvalidArgument for a role that is not one."""
        check_role(role)
        stamp = time_to_text(now)

        def update(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(
                f"UPDATE users SET role = ?, updated_at = ? WHERE email = ? AND deleted_at IS NULL"
                f" RETURNING {_COLUMNS}",
                (role, stamp, email),
            ).fetchone()
            return None if row is None else _user(row)

        user = await self._db.write(update)
        if user is None:
            raise NotFound("no user with this email")
        log.info("user %s is now %s", user.id, role)
        return user

    async def soft_delete(self, user_id: str, now: datetime) -> None:
        """Mark the user deleted: kept for the record, but no login and no token works."""
        stamp = time_to_text(now)

        def update(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE users SET deleted_at = ?, updated_at = ?"
                " WHERE id = ? AND deleted_at IS NULL",
                (stamp, stamp, user_id),
            )
            return cursor.rowcount

        if await self._db.write(update) == 0:
            raise NotFound(f"no user with id {user_id}")
        log.info("user %s deleted", user_id)
