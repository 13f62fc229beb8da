"""The marvel.v1 services: each method validates, calls a service, converts the answer."""

from __future__ import annotations

from marveld.domain.queries import CharacterQuery, SearchQuery
from marveld.grpc import convert
from marveld.grpc.bridge import CallContext, Service, unary
from marveld.proto.marvel import v1 as pb
from marveld.services.characters import CharacterService
from marveld.services.users import UserService

PACKAGE = "marvel.v1"


def auth_service(users: UserService) -> Service:
    async def register(request: pb.RegisterRequest, ctx: CallContext) -> pb.UserProfile:
        user = await users.register(
            name=request.name, email=request.email, password=request.password
        )
        return convert.profile(user)

    async def login(request: pb.LoginRequest, ctx: CallContext) -> pb.LoginResponse:
        token = await users.login(email=request.email, password=request.password)
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


def character_service(users: UserService, characters: CharacterService) -> Service:
    async def list_characters(
        request: pb.ListCharactersRequest, ctx: CallContext
    ) -> pb.CharacterPage:
        await users.authenticate(ctx.authorization)
        query = CharacterQuery.parse(
            name=request.name,
            name_starts_with=request.name_starts_with,
            modified_since=request.modified_since,
            order_by=request.order_by,
            limit=request.limit,
            offset=request.offset,
        )
        return convert.page(await characters.list(query))

    async def search_characters(
        request: pb.SearchCharactersRequest, ctx: CallContext
    ) -> pb.CharacterPage:
        await users.authenticate(ctx.authorization)
        query = SearchQuery.parse(request.query, request.limit, request.offset)
        return convert.page(await characters.search(query))

    async def get_character(request: pb.GetCharacterRequest, ctx: CallContext) -> pb.Character:
        await users.authenticate(ctx.authorization)
        return convert.character(await characters.get(request.id))

    return Service(
        f"{PACKAGE}.CharacterService",
        {
            "ListCharacters": unary(list_characters, pb.ListCharactersRequest, pb.CharacterPage),
            "SearchCharacters": unary(
                search_characters, pb.SearchCharactersRequest, pb.CharacterPage
            ),
            "GetCharacter": unary(get_character, pb.GetCharacterRequest, pb.Character),
        },
    )
