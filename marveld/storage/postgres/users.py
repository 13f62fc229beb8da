"""The ``users`` table on PostgreSQL (twin of marveld/storage/users.py; what both share:
marveld/storage/users_base.py).

Differences from SQLite, and why:

- emails are compared as ``lower(email) = lower(%s)``: the unique index is on
  ``lower(email)`` (SQLite: a ``COLLATE NOCASE`` column); the services store them
  lower-cased already (``normalize_email``), so both fold the same addresses;
- a taken email is the ``users_email`` unique violation (SQLite: an IntegrityError naming
  ``users.email``), turned into the same AlreadyExists;
- times are ``timestamptz``, read back as aware datetimes and normalised to UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from marveld.domain.errors import AlreadyExists
from marveld.domain.users import ROLES, User
from marveld.storage.users_base import COLUMNS, EMAIL_TAKEN, UserRepoBase, user_from_row

__all__ = ["ROLES", "PgUserRepo"]

_EMAIL_INDEX = "users_email"


def _to_time(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _one(conn: psycopg.Connection, sql: str, params: tuple[Any, ...]) -> User | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(sql, params).fetchone()
    return None if row is None else user_from_row(row, to_time=_to_time)


class PgUserRepo(UserRepoBase[psycopg.Connection]):
    """Accounts: emails unique on ``lower(email)``, ``timestamptz`` times."""

    def _insert(self, conn: psycopg.Connection, user: User) -> None:
        try:
            conn.execute(
                "INSERT INTO users (id, name, email, password, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    user.id,
                    user.name,
                    user.email,
                    user.password_hash,
                    user.created_at,
                    user.created_at,
                ),
            )
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == _EMAIL_INDEX:
                raise AlreadyExists(EMAIL_TAKEN) from None
            raise

    def _by_email(self, conn: psycopg.Connection, email: str) -> User | None:
        return _one(conn, f"SELECT {COLUMNS} FROM users WHERE lower(email) = lower(%s)", (email,))

    def _by_id(self, conn: psycopg.Connection, user_id: str) -> User | None:
        return _one(conn, f"SELECT {COLUMNS} FROM users WHERE id = %s", (user_id,))

    def _set_password_hash(
        self, conn: psycopg.Connection, user_id: str, password_hash: str, now: datetime
    ) -> int:
        return conn.execute(
            "UPDATE users SET password = %s, updated_at = %s WHERE id = %s",
            (password_hash, now, user_id),
        ).rowcount

    def _set_role(
        self, conn: psycopg.Connection, email: str, role: str, now: datetime
    ) -> User | None:
        return _one(
            conn,
            "UPDATE users SET role = %s, updated_at = %s"
            " WHERE lower(email) = lower(%s) AND deleted_at IS NULL"
            f" RETURNING {COLUMNS}",
            (role, now, email),
        )

    def _soft_delete(self, conn: psycopg.Connection, user_id: str, now: datetime) -> int:
        return conn.execute(
            "UPDATE users SET deleted_at = %s, updated_at = %s"
            " WHERE id = %s AND deleted_at IS NULL",
            (now, now, user_id),
        ).rowcount
