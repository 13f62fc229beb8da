"""Domain values to protobuf messages (betterproto2) and back."""

from __future__ import annotations

from marveld.domain.characters import Character, CharacterPage
from marveld.domain.users import User
from marveld.proto.marvel import v1 as pb
from marveld.services.characters import CacheStatus, Served
from marveld.services.security import AccessToken

_CACHE_STATUS = {
    CacheStatus.HIT: pb.CacheStatus.HIT,
    CacheStatus.MISS: pb.CacheStatus.MISS,
    CacheStatus.STALE: pb.CacheStatus.STALE,
}


def character(c: Character) -> pb.Character:
    return pb.Character(
        id=c.id,
        name=c.name,
        description=c.description,
        image_url=c.image_url,
        modified=c.modified,
        modified_raw=c.modified_raw,
        resource_uri=c.resource_uri,
        comics_available=c.comics_available,
        series_available=c.series_available,
        stories_available=c.stories_available,
        events_available=c.events_available,
        urls=[pb.CharacterUrl(type=u.type, url=u.url) for u in c.urls],
    )


def page_body(p: CharacterPage) -> pb.CharacterPage:
    """A page without its cache fields; :func:`cache_suffix` adds them to the encoding."""
    return pb.CharacterPage(
        characters=[character(c) for c in p.characters],
        offset=p.offset,
        limit=p.limit,
        total=p.total,
        count=p.count,
        attribution_text=p.attribution_text,
    )


def encode_answer(key: str, p: CharacterPage) -> bytes:
    """What the cache keeps beside an answer: a page's body, or one Character message for
    a single-character answer (``characters/<id>``); empty for an unknown id."""
    if key.startswith("characters/"):
        return bytes(character(p.characters[0])) if p.characters else b""
    return bytes(page_body(p))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


# Field tags of CharacterPage.cache_status (7) and cache_age_seconds (8), wire type varint.
_CACHE_STATUS_TAG = _varint(7 << 3)
_CACHE_AGE_TAG = _varint(8 << 3)


def cache_suffix(status: CacheStatus, age_seconds: int) -> bytes:
    """The encoded cache fields. Protobuf reads concatenated messages as one, the later
    value of a field winning, so ``body + suffix`` is the whole page without re-encoding."""
    return (
        _CACHE_STATUS_TAG
        + _varint(_CACHE_STATUS[status].value)
        + _CACHE_AGE_TAG
        + _varint(max(0, age_seconds))
    )


def page_reply(served: Served) -> bytes:
    return served.answer.encoded + cache_suffix(served.status, served.age_seconds)


def profile(user: User) -> pb.UserProfile:
    return pb.UserProfile(
        id=user.id,
        name=user.name,
        email=user.email,
        created_at=user.created_at,
        updated_at=user.updated_at,
    )


def login(token: AccessToken) -> pb.LoginResponse:
    return pb.LoginResponse(
        access_token=token.token, token_type="Bearer", expires_at=token.expires_at
    )
