"""Users: the stored shape and the checks on what a client sends."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from marveld.domain.errors import InvalidArgument

MIN_PASSWORD = 10
MAX_PASSWORD = 256
MAX_NAME = 100
MAX_EMAIL = 254
ROLES = ("user", "admin")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    email: str
    password_hash: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    role: str = "user"


def normalize_email(email: str) -> str:
    """Trimmed and lower-cased; InvalidArgument naming ``email`` when it is not an address."""
    value = email.strip().lower()
    if not value:
        raise InvalidArgument("email", "must not be empty")
    if len(value) > MAX_EMAIL or not _EMAIL.match(value):
        raise InvalidArgument("email", "is not an email address")
    return value


def check_name(name: str) -> str:
    value = name.strip()
    if not value:
        raise InvalidArgument("name", "must not be empty")
    if len(value) > MAX_NAME:
        raise InvalidArgument("name", f"must be at most {MAX_NAME} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise InvalidArgument("name", "must not contain control characters")
    return value


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument("password", f"must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidArgument("password", f"must be at most {MAX_PASSWORD} characters")
    if "\x00" in password:
        raise InvalidArgument("password", "must not contain NUL")
    return password


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidArgument("role", f"must be one of {', '.join(ROLES)}")
    return role
