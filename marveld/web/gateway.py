"""The JSON gateway: the gRPC contract on the HTTP port, on the original API's paths.

    POST /v1/auth/register      {"name", "email", "password"}  → 201, a profile
    POST /v1/auth/login         {"email", "password"}          → an access token
    GET  /v1/users/my-profile                                   → the caller's profile
    GET  /v1/characters         name, nameStartsWith, modifiedSince, orderBy, limit, offset
    GET  /v1/characters/params  name or query (free text), limit, offset
    GET  /v1/characters/{id}                                    → one character

The same services and the same validation as the gRPC face (it calls the services, not the
gRPC fast path). Character parameters keep Marvel's names and errors name them. Anything
that goes wrong is a problem (see problems.py): a bad body or parameter is a 400, never a
500, and every request ends within :data:`REQUEST_SECONDS`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from marveld.domain.errors import InvalidArgument, Unauthenticated
from marveld.domain.json_body import JsonInvalid, parse_json
from marveld.domain.queries import CharacterQuery, SearchQuery
from marveld.domain.text import printable
from marveld.domain.users import User
from marveld.services.characters import CharacterService
from marveld.services.users import UserService
from marveld.web import shapes
from marveld.web.problems import Problem, domain_error, problem_for, problem_response

log = logging.getLogger(__name__)

# A request without an answer by then gets 504 (the gRPC face's MAX_CALL_SECONDS).
REQUEST_SECONDS = 60.0
# Register and login bodies are a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024
MAX_ID = 2**63 - 1  # Marvel's ids are int64 on the gRPC face
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")

# Marvel's parameter names ↔ the query fields they fill (InvalidArgument names the latter).
LIST_PARAMS = {
    "name": "name",
    "nameStartsWith": "name_starts_with",
    "modifiedSince": "modified_since",
    "orderBy": "order_by",
    "limit": "limit",
    "offset": "offset",
}
SEARCH_PARAMS = ("name", "query", "limit", "offset")

Endpoint = Callable[[Request], Awaitable[Response]]


def gateway_routes(users: UserService, characters: CharacterService) -> list[BaseRoute]:
    async def register(request: Request) -> Response:
        body = await _json_body(request, ("name", "email", "password"))
        user = await users.register(
            name=body["name"], email=body["email"], password=body["password"], peer=_peer(request)
        )
        return JSONResponse(shapes.profile(user), status_code=201)

    async def login(request: Request) -> Response:
        body = await _json_body(request, ("email", "password"))
        token = await users.login(
            email=body["email"], password=body["password"], peer=_peer(request)
        )
        # A token is a credential: no cache may keep it (RFC 6749 §5.1).
        return JSONResponse(shapes.login(token), headers={"Cache-Control": "no-store"})

    async def my_profile(request: Request) -> Response:
        return JSONResponse(shapes.profile(await _authenticate(users, request)))

    async def list_characters(request: Request) -> Response:
        await _authenticate(users, request)
        params = _query(request, tuple(LIST_PARAMS))
        try:
            query = CharacterQuery.parse(
                name=params.get("name", ""),
                name_starts_with=params.get("nameStartsWith", ""),
                modified_since=params.get("modifiedSince", ""),
                order_by=params.get("orderBy", ""),
                limit=_integer(params, "limit"),
                offset=_integer(params, "offset"),
            )
        except InvalidArgument as exc:
            marvel_name = {field: param for param, field in LIST_PARAMS.items()}
            raise InvalidArgument(marvel_name.get(exc.field, exc.field), exc.message) from None
        return _served(shapes.page(served := await characters.list(query)), served.age_seconds)

    async def search_characters(request: Request) -> Response:
        await _authenticate(users, request)
        params = _query(request, SEARCH_PARAMS)
        if "name" in params and "query" in params:
            raise InvalidArgument("query", "give name or query, not both")
        if "name" not in params and "query" not in params:
            raise InvalidArgument("query", "give the text to search for as query (or name)")
        text_param = "name" if "name" in params else "query"
        try:
            query = SearchQuery.parse(
                params.get(text_param, ""), _integer(params, "limit"), _integer(params, "offset")
            )
        except InvalidArgument as exc:
            raise InvalidArgument(
                text_param if exc.field == "query" else exc.field, exc.message
            ) from None
        return _served(shapes.page(served := await characters.search(query)), served.age_seconds)

    async def get_character(request: Request) -> Response:
        await _authenticate(users, request)
        _query(request, ())
        text = request.path_params["id"]
        if not _INTEGER.fullmatch(text) or not 0 < int(text) <= MAX_ID:
            raise InvalidArgument("id", "must be a positive Marvel character id")
        served = await characters.get(int(text))
        return _served(shapes.character(served.page.characters[0]), served.age_seconds)

    return [
        Route("/v1/auth/register", _answer(register), methods=["POST"]),
        Route("/v1/auth/login", _answer(login), methods=["POST"]),
        Route("/v1/users/my-profile", _answer(my_profile), methods=["GET"]),
        Route("/v1/characters", _answer(list_characters), methods=["GET"]),
        Route("/v1/characters/params", _answer(search_characters), methods=["GET"]),
        Route("/v1/characters/{id}", _answer(get_character), methods=["GET"]),
    ]


def _peer(request: Request) -> str:
    """The client address, for the per-address limits of unauthenticated calls."""
    return request.client.host if request.client is not None else "unknown"


def _answer(endpoint: Endpoint) -> Endpoint:
    """Run ``endpoint`` under the time limit; every error becomes a problem."""

    async def answer(request: Request) -> Response:
        try:
            with trio.move_on_after(REQUEST_SECONDS):
                return await endpoint(request)
        except Problem as problem:
            return problem_response(problem)
        except Exception as exc:
            domain = domain_error(exc)
            if domain is None:
                log.exception("%s %s failed", request.method, request.url.path)
                return problem_response(Problem(500, "internal error"))
            return problem_response(problem_for(domain))
        return problem_response(Problem(504, f"no answer within {REQUEST_SECONDS:g} s"))

    return answer


def _served(body: dict[str, Any], age_seconds: int) -> Response:
    """A character answer; ``Age`` says how long ago marveld fetched it (RFC 9111)."""
    return JSONResponse(body, headers={"Age": str(age_seconds)})


async def _authenticate(users: UserService, request: Request) -> User:
    authorization = request.headers.get("authorization")
    try:
        return await users.authenticate(authorization)
    except Unauthenticated as exc:
        problem = problem_for(exc)
        if authorization:  # a token was sent and refused (RFC 6750 §3.1)
            challenge = f'{problem.headers["WWW-Authenticate"]}, error="invalid_token"'
            problem.headers["WWW-Authenticate"] = challenge
        raise problem from None


def _query(request: Request, known: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once; an unknown one is refused by name (a typo
    would otherwise be ignored silently)."""
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in known:
            expected = f"known: {', '.join(known)}" if known else "this path takes none"
            raise InvalidArgument(name, f"unknown parameter ({expected})")
        if name in params:
            raise InvalidArgument(name, "given more than once")
        params[name] = value
    return params


def _integer(params: dict[str, str], name: str) -> int | None:
    if name not in params:
        return None
    if not _INTEGER.fullmatch(params[name]):
        raise InvalidArgument(name, "must be an integer")
    return int(params[name])


async def _json_body(request: Request, fields: tuple[str, ...]) -> dict[str, str]:
    """The body's string fields (absent ones empty, so the services say what is missing).

    Parsed by ``domain.json_body``: too deep a nesting, a duplicated member or a lone
    surrogate is a 400 naming the member, never a RecursionError or an encoding error."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise Problem(
            415,
            f"send the body as application/json, not {media_type or 'without a content type'}",
            headers={"Accept-Post": "application/json"},
        )
    too_large = Problem(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    raw = bytearray()
    async with aclosing(request.stream()) as chunks:  # closed at once when we stop early
        async for chunk in chunks:
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise too_large
    try:
        data = parse_json(bytes(raw))
    except JsonInvalid as exc:
        raise Problem(400, str(exc), field=exc.field) from None
    if not isinstance(data, dict):
        raise Problem(400, "the body must be a JSON object")
    for name in data:
        if name not in fields:
            raise InvalidArgument(printable(name), f"unknown field (expected {', '.join(fields)})")
    body: dict[str, str] = {}
    for name in fields:
        value = data.get(name, "")
        if not isinstance(value, str):
            raise InvalidArgument(name, "must be a string")
        body[name] = value
    return body
