"""The query string of ``GET /v1/public/characters``, checked the way Marvel checked it.

Each function takes the request's parameters as (name, value) pairs; a repeated parameter's
last value counts. A refused value raises :class:`~marveld.sim.errors.ApiError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from marveld.sim import errors
from marveld.sim.catalogue import Selection

AUTH_PARAMS = frozenset({"ts", "apikey", "hash"})
FILTER_NOUNS = {"comics": "issue", "series": "series", "events": "event", "stories": "story"}
TEXT_PARAMS = ("name", "nameStartsWith", "modifiedSince", "orderBy", *FILTER_NOUNS)
LIST_PARAMS = frozenset({*TEXT_PARAMS, "limit", "offset"})
ORDERINGS = frozenset({"name", "-name", "modified", "-modified"})
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_FILTER_VALUES = 10
_DIGITS = re.compile(r"^\s*[0-9]+\s*$")
_MAX_DIGITS = 18
_UNENCODED_PLUS = re.compile(r"(T\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:?\d\d)$")


@dataclass(frozen=True, slots=True)
class ListQuery:
    selection: Selection
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def last_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Parameters by name; when one is repeated, its last value counts."""
    return dict(pairs)


def check_known(params: dict[str, str], allowed: frozenset[str]) -> None:
    """409 for the first parameter that is neither an auth parameter nor in ``allowed``."""
    for name in params:
        if name not in AUTH_PARAMS and name not in allowed:
            raise errors.unknown_parameter(name)


def parse_list_query(params: dict[str, str]) -> ListQuery:
    """The query of a character list call, or the 409 Marvel gave for it."""
    check_known(params, LIST_PARAMS)
    for name in TEXT_PARAMS:
        if name in params and not params[name].strip():
            raise errors.blank_parameter(name)
    limit = parse_limit(params.get("limit"))
    offset = parse_offset(params.get("offset"))
    since_text = params.get("modifiedSince")
    selection = Selection(
        name=params.get("name"),
        name_starts_with=params.get("nameStartsWith"),
        modified_since=None if since_text is None else parse_since(since_text),
        appears_in=tuple(
            (kind, parse_ids(params[kind], noun))
            for kind, noun in FILTER_NOUNS.items()
            if kind in params
        ),
        order_by=parse_order(params.get("orderBy")),
    )
    return ListQuery(selection=selection, limit=limit, offset=offset)


def parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not _DIGITS.match(text) or _to_int(text) < 1:
        raise errors.invalid_limit()
    limit = _to_int(text)
    if limit > MAX_LIMIT:
        raise errors.limit_over_max(MAX_LIMIT)
    return limit


def parse_offset(text: str | None) -> int:
    if text is None:
        return 0
    if not _DIGITS.match(text):
        raise errors.invalid_offset()
    return _to_int(text)


def _to_int(digits: str) -> int:
    """A non-negative decimal, capped so absurd lengths stay cheap (and past every end)."""
    text = digits.strip().lstrip("0") or "0"
    return int(text) if len(text) <= _MAX_DIGITS else 10**_MAX_DIGITS


def parse_order(text: str | None) -> tuple[str, ...]:
    """``name,-modified`` → ("name", "-modified"); a field given twice counts once."""
    if text is None:
        return ()
    items = [item.strip() for item in text.split(",")]
    seen: dict[str, str] = {}
    for item in items:
        if item not in ORDERINGS:
            raise errors.invalid_ordering(item or text.strip())
        seen.setdefault(item.lstrip("-"), item)
    return tuple(seen.values())


def parse_since(text: str) -> datetime:
    """A date (``2014-01-31``, midnight UTC) or an ISO 8601 time; no offset means UTC.

    A ``+`` that the client did not percent-encode arrives as a space; it is put back.
    """
    value = _UNENCODED_PLUS.sub(r"\1+\2", text.strip())
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise errors.invalid_date(text.strip()) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_ids(text: str, noun: str) -> frozenset[int]:
    """A comma-separated id list for the comics/series/events/stories filters. Values that
    are not ids are dropped; none left is a 409, and so are more than ten."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if len(values) > MAX_FILTER_VALUES:
        raise errors.too_many_filter_values(noun, MAX_FILTER_VALUES)
    ids = frozenset(_to_int(v) for v in values if _DIGITS.match(v) and _to_int(v) > 0)
    if not ids:
        raise errors.invalid_filter_value(noun)
    return ids
