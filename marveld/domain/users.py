"""Users: the stored shape and the checks on what a client sends.

Hostile text is refused with the field named: lone surrogates (a JSON body can spell
them; nothing can store or hash them), control characters (C0 and C1), the Unicode
controls that reorder text on screen (bidi embeddings, overrides and isolates: a name could
otherwise display as something else), and names with nothing visible in them. Names and
emails are NFC-normalized, so one that looks the same is stored the same.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from marveld.domain.errors import InvalidArgument
from marveld.domain.text import check_unicode

MIN_PASSWORD = 10
MAX_PASSWORD = 256
MAX_NAME = 100
MAX_EMAIL = 254
ROLES = ("user", "admin")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


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
    """Trimmed, NFC and lower-cased; InvalidArgument naming ``email`` when it is not an
    address (control, format or private-use characters included)."""
    value = check_unicode(email, "email").strip()
    if not value:
        raise InvalidArgument("email", "must not be empty")
    if len(value) > MAX_EMAIL:
        raise InvalidArgument("email", "is not an email address")
    value = unicodedata.normalize("NFC", value).lower()
    if not _EMAIL.match(value) or any(unicodedata.category(ch)[0] == "C" for ch in value):
        raise InvalidArgument("email", "is not an email address")
    return value


def check_name(name: str) -> str:
    """Trimmed and NFC-normalized; 1 to 100 characters, something visible among them."""
    value = unicodedata.normalize("NFC", check_unicode(name, "name").strip())
    if not value:
        raise InvalidArgument("name", "must not be empty")
    if len(value) > MAX_NAME:
        raise InvalidArgument("name", f"must be at most {MAX_NAME} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidArgument("name", "must not contain control characters")
    if any(ch in _BIDI_CONTROLS for ch in value):
        raise InvalidArgument("name", "must not contain bidirectional override characters")
    if all(unicodedata.category(ch)[0] in "CZM" for ch in value):
        raise InvalidArgument("name", "must contain a visible character")
    return value


def check_password(password: str, common: Collection[str] = ()) -> str:
    """10 to 256 characters, no NUL, valid Unicode, and not one of ``common``
    (lower-cased, trimmed)."""
    check_unicode(password, "password")
    if len(password) < MIN_PASSWORD:
        raise InvalidArgument("password", f"must be at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise InvalidArgument("password", f"must be at most {MAX_PASSWORD} characters")
    if "\x00" in password:
        raise InvalidArgument("password", "must not contain NUL")
    if password.strip().lower() in common:
        raise InvalidArgument("password", "is one of the most common passwords; choose another")
    return password


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidArgument("role", f"must be one of {', '.join(ROLES)}")
    return role
