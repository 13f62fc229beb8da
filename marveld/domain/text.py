"""Text a client sends that Python can hold but UTF-8 cannot carry.

A JSON body may spell a lone surrogate (``"\\ud800"``): ``json.loads`` gives a ``str``
holding it, and the first thing that encodes it (SQLite, argon2, a JSON answer echoing it)
raises ``UnicodeEncodeError``. It is refused where it comes in, with the field named.
"""

from __future__ import annotations

from marveld.domain.errors import InvalidArgument

NOT_UNICODE = "is not valid Unicode: it holds a lone surrogate such as \\ud800"


def is_unicode(value: str) -> bool:
    """True when ``value`` encodes as UTF-8 (it holds no lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_unicode(value: str, field: str) -> str:
    """``value``; InvalidArgument naming ``field`` when it holds a lone surrogate."""
    if not is_unicode(value):
        raise InvalidArgument(field, NOT_UNICODE)
    return value


def printable(value: str, limit: int = 60) -> str:
    """``value`` fit to quote in an error: lone surrogates escaped, at most ``limit``
    characters (a 64 KiB field name is not echoed back whole)."""
    text = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"
