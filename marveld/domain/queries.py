"""Character queries: validated, normalized, and turned into cache keys and upstream params."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode

from marveld.domain.characters import Character
from marveld.domain.errors import InvalidArgument

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_OFFSET = 1_000_000
MAX_NAME_LENGTH = 256
MAX_CHARACTER_ID = 2**31 - 1  # Marvel's ids are 7-digit ints
EARLIEST_SINCE = datetime(1900, 1, 1, tzinfo=UTC)
ORDERS = ("name", "-name", "modified", "-modified")
_DATE_ONLY = re.compile(r"^\d{4}-\d\d-\d\d$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 and C1
LIST_KEY_PREFIX = "characters?"
_KEY_FIELDS = ("name", "nameStartsWith", "modifiedSince", "orderBy", "limit", "offset")


def fold_name(name: str) -> str:
    """A name as the upstream compares it: case-folded, trailing spaces dropped."""
    return name.casefold().rstrip(" ")


def check_limit(limit: int | None, field: str = "limit") -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if limit < 1:
        raise InvalidArgument(field, "must be at least 1")
    if limit > MAX_LIMIT:
        raise InvalidArgument(field, f"must be at most {MAX_LIMIT}")
    return limit


def check_offset(offset: int | None, field: str = "offset") -> int:
    if offset is None:
        return 0
    if offset < 0:
        raise InvalidArgument(field, "must not be negative")
    if offset > MAX_OFFSET:
        raise InvalidArgument(field, f"must be at most {MAX_OFFSET}")
    return offset


def check_text(value: str, field: str, *, required: bool = False) -> str | None:
    """Trimmed text, or None when empty. Blank-but-present, control characters and
    over-long values are refused with the field named."""
    trimmed = value.strip()
    if not trimmed:
        if required:
            raise InvalidArgument(field, "must not be empty")
        if value:
            raise InvalidArgument(field, "must not be blank")
        return None
    if len(trimmed) > MAX_NAME_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_NAME_LENGTH} characters")
    if _CONTROL.search(trimmed):
        raise InvalidArgument(field, "must not contain control characters")
    return trimmed


def parse_since(value: str, field: str = "modified_since") -> datetime | None:
    """``2014-01-31`` (midnight UTC) or an RFC 3339 / ISO 8601 time with an offset."""
    text = value.strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            field, f"{text[:40]!r} is not a date (use 2014-01-31 or 2014-01-31T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        if not _DATE_ONLY.match(text):
            raise InvalidArgument(field, "a time needs an offset, e.g. Z or +01:00")
        parsed = parsed.replace(tzinfo=UTC)
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00, 9999-12-31T23:00-14:00: no UTC time
        raise InvalidArgument(field, "is out of range") from None
    if utc < EARLIEST_SINCE:
        raise InvalidArgument(field, "must be 1900-01-01 or later")
    return utc


def check_character_id(marvel_id: int, field: str = "id") -> int:
    if not 1 <= marvel_id <= MAX_CHARACTER_ID:
        raise InvalidArgument(field, f"must be a Marvel character id, 1 to {MAX_CHARACTER_ID}")
    return marvel_id


@dataclass(frozen=True, slots=True)
class CharacterQuery:
    """A validated ``GET /characters`` query. Build it with :meth:`parse`."""

    name: str | None = None
    name_starts_with: str | None = None
    modified_since: datetime | None = None
    order_by: str = "name"
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @classmethod
    def parse(
        cls,
        *,
        name: str = "",
        name_starts_with: str = "",
        modified_since: str = "",
        order_by: str = "",
        limit: int | None = None,
        offset: int | None = None,
    ) -> CharacterQuery:
        order = order_by.strip().lower() or "name"
        if order not in ORDERS:
            raise InvalidArgument("order_by", f"must be one of {', '.join(ORDERS)}")
        return cls(
            name=check_text(name, "name"),
            name_starts_with=check_text(name_starts_with, "name_starts_with"),
            modified_since=parse_since(modified_since),
            order_by=order,
            limit=check_limit(limit),
            offset=check_offset(offset),
        )

    def cache_key(self) -> str:
        """Equal for equivalent queries: names case-folded, defaults filled, fixed order."""
        parts = [
            ("name", self.name.casefold() if self.name else ""),
            ("nameStartsWith", self.name_starts_with.casefold() if self.name_starts_with else ""),
            ("modifiedSince", self._since_text()),
            ("orderBy", self.order_by),
            ("limit", str(self.limit)),
            ("offset", str(self.offset)),
        ]
        return "characters?" + urlencode(parts)

    @classmethod
    def from_cache_key(cls, key: str) -> CharacterQuery:
        """The query a :meth:`cache_key` stands for (names come back case-folded, which
        changes neither the key nor what the query matches). ValueError for any other key,
        such as ``characters/1009610``."""
        if not key.startswith(LIST_KEY_PREFIX):
            raise ValueError(f"not a character list key: {key[:60]!r}")
        params = dict(parse_qsl(key[len(LIST_KEY_PREFIX) :], keep_blank_values=True))
        if sorted(params) != sorted(_KEY_FIELDS):
            raise ValueError(f"not a character list key: {key[:60]!r}")
        try:
            return cls.parse(
                name=params["name"],
                name_starts_with=params["nameStartsWith"],
                modified_since=params["modifiedSince"],
                order_by=params["orderBy"],
                limit=int(params["limit"]),
                offset=int(params["offset"]),
            )
        except InvalidArgument as exc:
            raise ValueError(f"not a character list key: {exc}") from None

    def matches(self, character: Character) -> bool:
        """Whether the upstream would list ``character`` for this query (on some page):
        exact name and name prefix case-insensitively, ``modified`` on or after
        ``modified_since`` (a placeholder date is before every date)."""
        folded = fold_name(character.name)
        if self.name is not None and folded != fold_name(self.name):
            return False
        if self.name_starts_with is not None and not folded.startswith(
            self.name_starts_with.casefold()
        ):
            return False
        if self.modified_since is not None:
            modified = character.modified
            return modified is not None and modified >= self.modified_since
        return True

    def upstream_params(self) -> dict[str, str]:
        """The query string for Marvel's ``GET /v1/public/characters``."""
        params: dict[str, str] = {}
        if self.name:
            params["name"] = self.name
        if self.name_starts_with:
            params["nameStartsWith"] = self.name_starts_with
        if self.modified_since:
            params["modifiedSince"] = self._since_text()
        params["orderBy"] = self.order_by
        params["limit"] = str(self.limit)
        params["offset"] = str(self.offset)
        return params

    def _since_text(self) -> str:
        return (
            self.modified_since.strftime("%Y-%m-%dT%H:%M:%S+00:00") if self.modified_since else ""
        )


MAX_SEARCH_TERMS = 16
# What the full-text index calls a token: runs of letters and digits. Everything else in a
# search (quotes, ``*``, parentheses, control characters) separates terms and is never syntax.
_TERM = re.compile(r"[^\W_]+")
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A free-text search: the cleaned text, its terms, and the page. Build it with
    :meth:`parse`. Any text is data: operators and quotes are not interpreted."""

    text: str
    terms: tuple[str, ...]
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @classmethod
    def parse(cls, query: str, limit: int | None, offset: int | None) -> SearchQuery:
        """InvalidArgument naming ``query`` when it is empty or blank (control characters
        count as blanks) or too long; ``limit`` and ``offset`` as for a list."""
        text = _SPACE_OR_CONTROL.sub(" ", query).strip()
        if not text:
            raise InvalidArgument("query", "must not be empty")
        if len(text) > MAX_NAME_LENGTH:
            raise InvalidArgument("query", f"must be at most {MAX_NAME_LENGTH} characters")
        terms = tuple(dict.fromkeys(t.casefold() for t in _TERM.findall(text)))
        return cls(
            text=text,
            terms=terms[:MAX_SEARCH_TERMS],
            limit=check_limit(limit),
            offset=check_offset(offset),
        )

    def upstream_query(self) -> CharacterQuery:
        """The same search as a name prefix, for an upstream that has no free-text search."""
        return CharacterQuery(name_starts_with=self.text, limit=self.limit, offset=self.offset)
