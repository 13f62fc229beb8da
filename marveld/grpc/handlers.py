"""The marvel.v1 services: each method validates, calls a service, converts the answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marveld.domain.errors import InvalidArgument
from marveld.domain.queries import CharacterQuery, SearchQuery
from marveld.grpc import convert
from marveld.grpc.bridge import CallContext, FastPath, Service, TrioHandler, unary
from marveld.proto.marvel import v1 as pb
from marveld.services.characters import CacheStatus, CharacterService, character_key
from marveld.services.users import UserService

PACKAGE = "marvel.v1"


def auth_service(users: UserService) -> Service:
    async def register(request: pb.RegisterRequest, ctx: CallContext) -> pb.UserProfile:
        user = await users.register(
            name=request.name, email=request.email, password=request.password, peer=ctx.peer
        )
        return convert.profile(user)

    async def login(request: pb.LoginRequest, ctx: CallContext) -> pb.LoginResponse:
        token = await users.login(email=request.email, password=request.password, peer=ctx.peer)
        return convert.login(token)

    return Service(
        f"{PACKAGE}.AuthService",
        {
            "Register": unary(register, pb.RegisterRequest, pb.UserProfile),
            "Login": unary(login, pb.LoginRequest, pb.LoginResponse),
        },
    )


def user_service(users: UserService) -> Service:
    async def get_my_profile(request: pb.GetMyProfileRequest, ctx: CallContext) -> pb.UserProfile:
        return convert.profile(await users.authenticate(ctx.authorization))

    return Service(
        f"{PACKAGE}.UserService",
        {"GetMyProfile": unary(get_my_profile, pb.GetMyProfileRequest, pb.UserProfile)},
    )


def _list_query(request: pb.ListCharactersRequest) -> CharacterQuery:
    return CharacterQuery.parse(
        name=request.name,
        name_starts_with=request.name_starts_with,
        modified_since=request.modified_since,
        order_by=request.order_by,
        limit=request.limit,
        offset=request.offset,
    )


def character_service(users: UserService, characters: CharacterService) -> Service:
    """Pages go out as bytes: the cached encoding plus the cache fields (see convert)."""

    def fast_page(to_query: Callable[[Any], CharacterQuery]) -> FastPath:
        def fast(request: Any, ctx: CallContext) -> bytes | None:
            if users.authenticate_fast(ctx.authorization) is None:
                return None
            try:
                key = to_query(request).cache_key()
            except InvalidArgument:
                return None  # the slow path says what is wrong
            hit = characters.fresh(key)
            if hit is None:
                return None
            answer, age = hit
            return answer.encoded + convert.cache_suffix(CacheStatus.HIT, age)

        return fast

    def slow_page(to_query: Callable[[Any], CharacterQuery]) -> TrioHandler:
        async def slow(request: Any, ctx: CallContext) -> bytes:
            await users.authenticate(ctx.authorization)
            return convert.page_reply(await characters.list(to_query(request)))

        return slow

    def fast_search(request: pb.SearchCharactersRequest, ctx: CallContext) -> bytes | None:
        if users.authenticate_fast(ctx.authorization) is None:
            return None
        try:
            query = SearchQuery.parse(request.query, request.limit, request.offset)
        except InvalidArgument:
            return None
        hit = characters.fresh_search(query)
        if hit is None:
            return None
        answer, age = hit
        return answer.encoded + convert.cache_suffix(CacheStatus.HIT, age)

    async def search(request: pb.SearchCharactersRequest, ctx: CallContext) -> bytes:
        await users.authenticate(ctx.authorization)
        query = SearchQuery.parse(request.query, request.limit, request.offset)
        return convert.page_reply(await characters.search(query))

    def fast_character(request: pb.GetCharacterRequest, ctx: CallContext) -> bytes | None:
        if users.authenticate_fast(ctx.authorization) is None or request.id <= 0:
            return None
        hit = characters.fresh(character_key(request.id))
        if hit is None or not hit[0].encoded:
            return None  # unknown ids take the slow path, which says NOT_FOUND
        return hit[0].encoded

    async def get_character(request: pb.GetCharacterRequest, ctx: CallContext) -> bytes:
        await users.authenticate(ctx.authorization)
        return (await characters.get(request.id)).answer.encoded

    return Service(
        f"{PACKAGE}.CharacterService",
        {
            "ListCharacters": unary(
                slow_page(_list_query),
                pb.ListCharactersRequest,
                pb.CharacterPage,
                fast=fast_page(_list_query),
            ),
            "SearchCharacters": unary(
                search, pb.SearchCharactersRequest, pb.CharacterPage, fast=fast_search
            ),
            "GetCharacter": unary(
                get_character, pb.GetCharacterRequest, pb.Character, fast=fast_character
            ),
        },
    )
