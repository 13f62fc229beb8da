"""Marvel characters and pages of them, parsed from the upstream's JSON."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from marveld.domain.errors import UpstreamError

# Marvel's terms: show this with the data.
ATTRIBUTION = "Data provided by Marvel. © 2026 MARVEL"
_MARVEL_TIME = re.compile(r"^(-?\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)([+-]\d\d):?(\d\d)$")


def parse_marvel_time(text: str) -> datetime | None:
    """Marvel's ``2014-04-29T14:18:17-0400`` as an aware datetime.

    Placeholders the API really sends (``-0001-11-30T00:00:00-0500``) have no datetime:
    the answer is None, and the raw text is kept beside it.
    """
    match = _MARVEL_TIME.match(text)
    if match is None or match.group(1).startswith("-") or match.group(1) == "0000":
        return None
    y, mo, d, h, mi, s, oh, om = match.groups()
    try:
        return datetime.fromisoformat(f"{y}-{mo}-{d}T{h}:{mi}:{s}{oh}:{om}")
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class CharacterUrl:
    type: str
    url: str


@dataclass(frozen=True, slots=True)
class Character:
    """One character, as marveld serves it. ``modified_raw`` is the upstream's own text."""

    id: int
    name: str
    description: str
    image_url: str
    modified_raw: str
    resource_uri: str
    comics_available: int
    series_available: int
    stories_available: int
    events_available: int
    urls: tuple[CharacterUrl, ...]

    @property
    def modified(self) -> datetime | None:
        return parse_marvel_time(self.modified_raw)

    @classmethod
    def from_marvel(cls, raw: Mapping[str, Any]) -> Character:
        """Parse one element of Marvel's ``data.results``; UpstreamError when it is malformed."""
        try:
            thumb = raw.get("thumbnail") or {}
            path, ext = thumb.get("path", ""), thumb.get("extension", "")
            character = cls(
                id=_int(raw["id"]),
                name=_str(raw["name"]),
                description=_str(raw.get("description") or ""),
                image_url=f"{path}.{ext}" if path else "",
                modified_raw=_str(raw.get("modified") or ""),
                resource_uri=_str(raw.get("resourceURI") or ""),
                comics_available=_available(raw, "comics"),
                series_available=_available(raw, "series"),
                stories_available=_available(raw, "stories"),
                events_available=_available(raw, "events"),
                urls=tuple(
                    CharacterUrl(type=_str(u.get("type", "")), url=_str(u.get("url", "")))
                    for u in raw.get("urls") or ()
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError(f"malformed character in upstream answer: {exc!r}") from exc
        return character

    def to_json(self) -> dict[str, Any]:
        """A plain-JSON form, for the cache table; ``from_json`` reads it back."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "image_url": self.image_url,
            "modified": self.modified_raw,
            "resource_uri": self.resource_uri,
            "comics": self.comics_available,
            "series": self.series_available,
            "stories": self.stories_available,
            "events": self.events_available,
            "urls": [[u.type, u.url] for u in self.urls],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Character:
        return cls(
            id=data["id"],
            name=data["name"],
            description=data["description"],
            image_url=data["image_url"],
            modified_raw=data["modified"],
            resource_uri=data["resource_uri"],
            comics_available=data["comics"],
            series_available=data["series"],
            stories_available=data["stories"],
            events_available=data["events"],
            urls=tuple(CharacterUrl(type=t, url=u) for t, u in data["urls"]),
        )

    def content_hash(self) -> str:
        """A digest of everything marveld stores about the character: equal hash, no change."""
        blob = json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CharacterPage:
    """One page of Marvel's ``data`` envelope."""

    characters: tuple[Character, ...]
    offset: int
    limit: int
    total: int
    count: int
    attribution_text: str
    etag: str | None = None

    @classmethod
    def from_marvel(cls, envelope: Mapping[str, Any]) -> CharacterPage:
        """Parse a whole ``GET /characters`` answer; UpstreamError when it is malformed."""
        try:
            data = envelope["data"]
            results = data["results"]
            if not isinstance(results, list):
                raise TypeError("data.results is not a list")
            page = cls(
                characters=tuple(Character.from_marvel(r) for r in results),
                offset=_int(data["offset"]),
                limit=_int(data["limit"]),
                total=_int(data["total"]),
                count=_int(data["count"]),
                attribution_text=_str(envelope.get("attributionText") or ""),
                etag=envelope.get("etag"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"malformed upstream answer: {exc!r}") from exc
        return page

    def to_json(self) -> dict[str, Any]:
        return {
            "characters": [c.to_json() for c in self.characters],
            "offset": self.offset,
            "limit": self.limit,
            "total": self.total,
            "count": self.count,
            "attribution_text": self.attribution_text,
            "etag": self.etag,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CharacterPage:
        return cls(
            characters=tuple(Character.from_json(c) for c in data["characters"]),
            offset=data["offset"],
            limit=data["limit"],
            total=data["total"],
            count=data["count"],
            attribution_text=data["attribution_text"],
            etag=data.get("etag"),
        )


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _available(raw: Mapping[str, Any], key: str) -> int:
    section = raw.get(key)
    if section is None:
        return 0
    return _int(section.get("available", 0))
