"""The marvel.v1 services: each method validates, calls a service, converts the answer."""

from __future__ import annotations

from marveld.domain.errors import InvalidArgument
from marveld.domain.queries import CharacterQuery, SearchQuery
from marveld.domain.users import User
from marveld.grpc import convert
from marveld.grpc.bridge import CallContext, Service, unary
from marveld.proto.marvel import v1 as pb
from marveld.services.characters import CacheStatus, CharacterService, character_key
from marveld.services.memory_tier import Answer
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


def _search_query(request: pb.SearchCharactersRequest) -> SearchQuery:
    return SearchQuery.parse(request.query, request.limit, request.offset)


def character_service(users: UserService, characters: CharacterService) -> Service:
    """Answers go out as bytes: the cached encoding (plus the cache fields for pages, see
    convert). Each method has a fast path, tried on the asyncio side without entering trio,
    that answers fresh memory-tier hits for a recently checked token; anything else takes
    the slow path, which also says what is wrong with a request."""

    def page_hit(hit: tuple[Answer, int] | None) -> bytes | None:
        if hit is None:
            return None
        answer, age = hit
        return answer.encoded + convert.cache_suffix(CacheStatus.HIT, age)

    def answered(user: User, answer: bytes | None) -> bytes | None:
        """``answer``; when None (the slow path answers), the fast path's charge back."""
        if answer is None:
            users.refund_fast(user)
        return answer

    def fast_list(request: pb.ListCharactersRequest, ctx: CallContext) -> bytes | None:
        if (user := users.authenticate_fast(ctx.authorization)) is None:
            return None
        try:
            return answered(user, page_hit(characters.fresh(_list_query(request).cache_key())))
        except InvalidArgument:
            return answered(user, None)

    async def list_characters(request: pb.ListCharactersRequest, ctx: CallContext) -> bytes:
        await users.authenticate(ctx.authorization)
        return convert.page_reply(await characters.list(_list_query(request)))

    def fast_search(request: pb.SearchCharactersRequest, ctx: CallContext) -> bytes | None:
        if (user := users.authenticate_fast(ctx.authorization)) is None:
            return None
        try:
            return answered(user, page_hit(characters.fresh_search(_search_query(request))))
        except InvalidArgument:
            return answered(user, None)

    async def search(request: pb.SearchCharactersRequest, ctx: CallContext) -> bytes:
        await users.authenticate(ctx.authorization)
        return convert.page_reply(await characters.search(_search_query(request)))

    def fast_character(request: pb.GetCharacterRequest, ctx: CallContext) -> bytes | None:
        if (user := users.authenticate_fast(ctx.authorization)) is None:
            return None
        hit = characters.fresh(character_key(request.id)) if request.id > 0 else None
        if hit is None or not hit[0].encoded:
            return answered(user, None)  # unknown ids take the slow path: NOT_FOUND
        return hit[0].encoded

    async def get_character(request: pb.GetCharacterRequest, ctx: CallContext) -> bytes:
        await users.authenticate(ctx.authorization)
        return (await characters.get(request.id)).answer.encoded

    return Service(
        f"{PACKAGE}.CharacterService",
        {
            "ListCharacters": unary(
                list_characters, pb.ListCharactersRequest, pb.CharacterPage, fast=fast_list
            ),
            "SearchCharacters": unary(
                search, pb.SearchCharactersRequest, pb.CharacterPage, fast=fast_search
            ),
            "GetCharacter": unary(
                get_character, pb.GetCharacterRequest, pb.Character, fast=fast_character
            ),
        },
    )
