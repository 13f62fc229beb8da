"""Domain values to protobuf messages and wire bytes."""

from __future__ import annotations

from typing import Any

from google.protobuf.message_factory import GetMessageClass

from marveld.domain.characters import Character, CharacterPage
from marveld.domain.users import User
from marveld.proto.google_proto_descriptor_pool import default_google_proto_descriptor_pool
from marveld.proto.marvel import v1 as pb
from marveld.services.characters import CacheStatus, Served
from marveld.services.security import AccessToken

_CACHE_STATUS = {
    CacheStatus.HIT: pb.CacheStatus.HIT,
    CacheStatus.MISS: pb.CacheStatus.MISS,
    CacheStatus.STALE: pb.CacheStatus.STALE,
}


def encode_answer(key: str, p: CharacterPage) -> bytes:
    """What the cache keeps beside an answer: a page's body, or one Character message for
    a single-character answer (``characters/<id>``); empty for an unknown id.

    Encoded with protobuf's own runtime (upb, in C) from the same descriptors: byte for byte
    what betterproto2 writes, 13x faster (bench: 96 us against 1,236 us for a 20-character
    page), and this runs on every miss.
    """
    if key.startswith("characters/"):
        if not p.characters:
            return b""
        message = _UPB_CHARACTER()
        _fill_character(message, p.characters[0])
        return bytes(message.SerializeToString())
    page = _UPB_PAGE(
        offset=p.offset,
        limit=p.limit,
        total=p.total,
        count=p.count,
        attribution_text=p.attribution_text,
    )
    for c in p.characters:
        _fill_character(page.characters.add(), c)
    return bytes(page.SerializeToString())


def _fill_character(message: Any, c: Character) -> None:
    message.id = c.id
    message.name = c.name
    message.description = c.description
    message.image_url = c.image_url
    message.modified_raw = c.modified_raw
    message.resource_uri = c.resource_uri
    message.comics_available = c.comics_available
    message.series_available = c.series_available
    message.stories_available = c.stories_available
    message.events_available = c.events_available
    if (modified := c.modified) is not None:
        message.modified.FromDatetime(modified)
    for u in c.urls:
        message.urls.add(type=u.type, url=u.url)


# Message classes of protobuf's runtime for marveld's own descriptors (constants, like the
# generated code they mirror).
_UPB_PAGE: Any = GetMessageClass(
    default_google_proto_descriptor_pool.FindMessageTypeByName("marvel.v1.CharacterPage")
)
_UPB_CHARACTER: Any = GetMessageClass(
    default_google_proto_descriptor_pool.FindMessageTypeByName("marvel.v1.Character")
)


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
