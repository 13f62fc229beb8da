"""Domain values as the JSON gateway's bodies: the shape of the gRPC messages.

Field names are the proto fields' (snake_case), numbers stay numbers, times are RFC 3339
in UTC with ``Z`` (like protobuf's JSON form of a Timestamp, None when unset), and the
cache status is ``HIT``, ``MISS`` or ``STALE``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marveld.domain.characters import Character
from marveld.domain.users import User
from marveld.services.characters import Served
from marveld.services.security import AccessToken


def timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def character(c: Character) -> dict[str, Any]:
    """A ``marvel.v1.Character``."""
    return {
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "image_url": c.image_url,
        "modified": timestamp(c.modified),
        "resource_uri": c.resource_uri,
        "comics_available": c.comics_available,
        "series_available": c.series_available,
        "stories_available": c.stories_available,
        "events_available": c.events_available,
        "urls": [{"type": u.type, "url": u.url} for u in c.urls],
        "modified_raw": c.modified_raw,
    }


def page(served: Served) -> dict[str, Any]:
    """A ``marvel.v1.CharacterPage``, with where it came from."""
    p = served.page
    return {
        "characters": [character(c) for c in p.characters],
        "offset": p.offset,
        "limit": p.limit,
        "total": p.total,
        "count": p.count,
        "attribution_text": p.attribution_text,
        "cache_status": served.status.name,
        "cache_age_seconds": served.age_seconds,
    }


def profile(user: User) -> dict[str, Any]:
    """A ``marvel.v1.UserProfile``: never the password hash or the role."""
    return {
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "created_at": timestamp(user.created_at),
        "updated_at": timestamp(user.updated_at),
    }


def login(token: AccessToken) -> dict[str, Any]:
    """A ``marvel.v1.LoginResponse``."""
    return {
        "access_token": token.token,
        "token_type": "Bearer",
        "expires_at": timestamp(token.expires_at),
    }
