"""How values are stored: timestamps as fixed-format ISO 8601 UTC text, JSON compact."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def time_to_text(value: datetime) -> str:
    """``2026-11-24T06:24:04.123456+00:00``: one fixed format, so text order is time order."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"the store takes aware datetimes only, got naive {value!r}")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def text_to_time(text: str) -> datetime:
    """The aware UTC datetime a :func:`time_to_text` string stands for."""
    return datetime.fromisoformat(text).astimezone(UTC)


def optional_text_to_time(text: str | None) -> datetime | None:
    return None if text is None else text_to_time(text)


def dump_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def load_json(text: str) -> Any:
    return json.loads(text)
