"""Domain values to protobuf messages (betterproto2) and back."""

from __future__ import annotations

from marveld.domain.characters import Character
from marveld.domain.users import User
from marveld.proto.marvel import v1 as pb
from marveld.services.characters import CacheStatus, ServedPage
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


def page(served: ServedPage) -> pb.CharacterPage:
    p = served.page
    return pb.CharacterPage(
        characters=[character(c) for c in p.characters],
        offset=p.offset,
        limit=p.limit,
        total=p.total,
        count=p.count,
        attribution_text=p.attribution_text,
        cache_status=_CACHE_STATUS[served.status],
        cache_age_seconds=served.age_seconds,
    )


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
