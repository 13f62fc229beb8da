"""The ``users`` table (what both backends share: marveld/storage/users_base.py)."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from marveld.domain.errors import AlreadyExists
from marveld.domain.users import ROLES, User
from marveld.storage.codec import text_to_time, time_to_text
from marveld.storage.users_base import COLUMNS, EMAIL_TAKEN, UserRepoBase, user_from_row

__all__ = ["ROLES", "UserRepo"]


def _one(conn: sqlite3.Connection, sql: str, params: tuple[str, ...]) -> User | None:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else user_from_row(row, to_time=text_to_time)


class UserRepo(UserRepoBase[sqlite3.Connection]):
    """Accounts: emails in a ``COLLATE NOCASE`` column, times as text."""

    def _insert(self, conn: sqlite3.Connection, user: User) -> None:
        stamp = time_to_text(user.created_at)
        try:
            conn.execute(
                "INSERT INTO users (id, name, email, password, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (user.id, user.name, user.email, user.password_hash, stamp, stamp),
            )
        except sqlite3.IntegrityError as exc:
            if "users.email" in str(exc):
                raise AlreadyExists(EMAIL_TAKEN) from None
            raise

    def _by_email(self, conn: sqlite3.Connection, email: str) -> User | None:
        return _one(conn, f"SELECT {COLUMNS} FROM users WHERE email = ?", (email,))

    def _by_id(self, conn: sqlite3.Connection, user_id: str) -> User | None:
        return _one(conn, f"SELECT {COLUMNS} FROM users WHERE id = ?", (user_id,))

    def _set_password_hash(
        self, conn: sqlite3.Connection, user_id: str, password_hash: str, now: datetime
    ) -> int:
        return conn.execute(
            "UPDATE users SET password = ?, updated_at = ? WHERE id = ?",
            (password_hash, time_to_text(now), user_id),
        ).rowcount

    def _set_role(
        self, conn: sqlite3.Connection, email: str, role: str, now: datetime
    ) -> User | None:
        return _one(
            conn,
            "UPDATE users SET role = ?, updated_at = ? WHERE email = ? AND deleted_at IS NULL"
            f" RETURNING {COLUMNS}",
            (role, time_to_text(now), email),
        )

    def _soft_delete(self, conn: sqlite3.Connection, user_id: str, now: datetime) -> int:
        stamp = time_to_text(now)
        return conn.execute(
            "UPDATE users SET deleted_at = ?, updated_at = ? WHERE id = ? AND deleted_at IS NULL",
            (stamp, stamp, user_id),
        ).rowcount
