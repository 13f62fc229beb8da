"""The JSON gateway with a plain HTTP client: each path, the shapes of the gRPC messages,
and a problem+json answer with the right status for each kind of bad request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from starlette.requests import Request
from starlette.responses import Response

from marveld.domain import errors
from marveld.services.guard import BudgetSpent
from marveld.sim import SimHandle
from marveld.web import gateway
from marveld.web.problems import problem_for
from tests.calls import PASSWORD, TIMEOUT
from tests.conftest import Clock, Running, running_daemon

pytestmark = pytest.mark.both_backends  # the service tests run on SQLite and PostgreSQL

PROBLEM = "application/problem+json"


async def register(http: httpx.AsyncClient, email: str = "peter@example.com") -> httpx.Response:
    return await http.post(
        "/v1/auth/register", json={"name": "Peter", "email": email, "password": PASSWORD}
    )


async def bearer(http: httpx.AsyncClient, email: str = "peter@example.com") -> dict[str, str]:
    await register(http, email)
    login = await http.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    return {"authorization": f"Bearer {login.json()['access_token']}"}


@pytest.fixture
async def http(marveld: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=marveld.http, timeout=TIMEOUT) as client:
        yield client


def problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """The body of a problem answer, checked against RFC 9457's members."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == "about:blank"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body.get("field") == field
    assert body["correlation_id"] == response.headers["x-correlation-id"]
    return body


# --- the paths --------------------------------------------------------------------------------


async def test_register_login_and_my_profile(http: httpx.AsyncClient) -> None:
    created = await register(http)
    assert created.status_code == 201
    profile = created.json()
    assert set(profile) == {"id", "name", "email", "created_at", "updated_at"}
    assert profile["email"] == "peter@example.com"
    assert profile["created_at"].endswith("Z")

    login = await http.post(
        "/v1/auth/login", json={"email": "PETER@example.com", "password": PASSWORD}
    )
    assert login.status_code == 200
    assert login.headers["cache-control"] == "no-store"
    token = login.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_at"].endswith("Z")

    me = await http.get(
        "/v1/users/my-profile", headers={"authorization": f"Bearer {token['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json() == profile


async def test_characters_with_marvels_parameters(http: httpx.AsyncClient) -> None:
    auth = await bearer(http)
    params = {"nameStartsWith": "spider", "orderBy": "-name", "limit": "3", "offset": "0"}
    first = await http.get("/v1/characters", params=params, headers=auth)
    assert first.status_code == 200, first.text
    page = first.json()
    assert page["cache_status"] == "MISS"
    assert (page["limit"], page["offset"], page["count"]) == (3, 0, len(page["characters"]))
    assert page["attribution_text"]
    names = [c["name"] for c in page["characters"]]
    assert names == sorted(names, reverse=True)
    assert all(name.lower().startswith("spider") for name in names)
    character = page["characters"][0]
    assert set(character) == {
        "id", "name", "description", "image_url", "modified", "resource_uri",
        "comics_available", "series_available", "stories_available", "events_available",
        "urls", "modified_raw",
    }  # fmt: skip
    assert isinstance(character["id"], int)

    again = await http.get("/v1/characters", params={**params, "nameStartsWith": "SPIDER "},
                           headers=auth)  # fmt: skip
    assert again.json()["cache_status"] == "HIT"
    assert again.headers["age"] == str(again.json()["cache_age_seconds"])

    since = await http.get(
        "/v1/characters", params={"modifiedSince": "2020-01-01", "name": "Spider-Man (Peter "
                                  "Parker)"}, headers=auth)  # fmt: skip
    assert since.status_code == 200
    assert [c["id"] for c in since.json()["characters"]] == [1009610]


async def test_search_by_query_or_name_and_get_by_id(http: httpx.AsyncClient) -> None:
    auth = await bearer(http)
    by_query = await http.get("/v1/characters/params", params={"query": "iron"}, headers=auth)
    by_name = await http.get("/v1/characters/params", params={"name": "Iron"}, headers=auth)
    assert by_query.status_code == by_name.status_code == 200
    ids = [c["id"] for c in by_query.json()["characters"]]
    assert ids
    assert [c["id"] for c in by_name.json()["characters"]] == ids

    one = await http.get("/v1/characters/1009610", headers=auth)
    assert one.status_code == 200
    assert one.json()["name"] == "Spider-Man (Peter Parker)"
    assert one.json()["modified"] == "2021-06-30T21:32:26Z"
    assert "age" in one.headers


# --- problems ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"orderBy": "power"}, "orderBy"),
        ({"modifiedSince": "yesterday"}, "modifiedSince"),
        ({"nameStartsWith": "   "}, "nameStartsWith"),
        ({"name": "x" * 300}, "name"),
        ({"namestartswith": "spider"}, "namestartswith"),  # a typo is not ignored
        ([("limit", "1"), ("limit", "2")], "limit"),
    ],
)
async def test_bad_character_parameters_are_400_naming_marvels_parameter(
    http: httpx.AsyncClient, params: Any, field: str
) -> None:
    auth = await bearer(http)
    answer = await http.get("/v1/characters", params=params, headers=auth)
    problem(answer, 400, field)


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/characters/params", {}, "query"),
        ("/v1/characters/params", {"query": " "}, "query"),
        ("/v1/characters/params", {"name": ""}, "name"),
        ("/v1/characters/params", {"name": "a", "query": "b"}, "query"),
        ("/v1/characters/params", {"query": "iron", "limit": "0"}, "limit"),
        ("/v1/characters/spider", {}, "id"),
        ("/v1/characters/0", {}, "id"),
        ("/v1/characters/99999999999999999999", {}, "id"),
        ("/v1/characters/1009610", {"limit": "1"}, "limit"),
    ],
)
async def test_bad_search_and_id_requests_are_400(
    http: httpx.AsyncClient, path: str, params: dict[str, str], field: str
) -> None:
    auth = await bearer(http)
    problem(await http.get(path, params=params, headers=auth), 400, field)


async def test_an_unknown_character_is_404(http: httpx.AsyncClient) -> None:
    auth = await bearer(http)
    body = problem(await http.get("/v1/characters/1", headers=auth), 404)
    assert "character 1 not found" in body["detail"]


@pytest.mark.parametrize(
    "path", ["/v1/users/my-profile", "/v1/characters", "/v1/characters/1009610"]
)
async def test_without_a_token_it_is_401_with_a_bearer_challenge(
    http: httpx.AsyncClient, path: str
) -> None:
    missing = await http.get(path)
    problem(missing, 401)
    assert missing.headers["www-authenticate"] == 'Bearer realm="marveld"'
    refused = await http.get(path, headers={"authorization": "Bearer forged.token.here"})
    problem(refused, 401)
    assert refused.headers["www-authenticate"] == 'Bearer realm="marveld", error="invalid_token"'


async def test_a_wrong_password_is_401_and_a_taken_email_409(http: httpx.AsyncClient) -> None:
    await register(http)
    wrong = await http.post(
        "/v1/auth/login", json={"email": "peter@example.com", "password": "not the password"}
    )
    assert problem(wrong, 401)["detail"] == "wrong email or password"
    problem(await register(http, "Peter@Example.com"), 409)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "P", "email": "not an address", "password": PASSWORD}, "email"),
        ({"name": "P", "email": "p@example.com", "password": "short"}, "password"),
        ({"email": "p@example.com", "password": PASSWORD}, "name"),  # absent: empty
        ({"name": 7, "email": "p@example.com", "password": PASSWORD}, "name"),
        ({"name": "P", "email": "p@example.com", "password": PASSWORD, "role": "admin"}, "role"),
    ],
)
async def test_bad_register_fields_are_400_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    problem(await http.post("/v1/auth/register", json=body), 400, field)


@pytest.mark.parametrize("content", [b"{", b"[]", b'"text"', b"\xff\xfe{"])
async def test_a_body_that_is_not_a_json_object_is_400(
    http: httpx.AsyncClient, content: bytes
) -> None:
    answer = await http.post(
        "/v1/auth/login", content=content, headers={"content-type": "application/json"}
    )
    problem(answer, 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_a_body_that_is_not_json_is_415(
    http: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    answer = await http.post("/v1/auth/login", content=b"email=a", headers=headers)
    problem(answer, 415)
    assert answer.headers["accept-post"] == "application/json"


async def test_an_oversized_body_is_413_declared_or_streamed(http: httpx.AsyncClient) -> None:
    huge = b'{"email": "' + b"a" * (gateway.MAX_BODY_BYTES + 1) + b'"}'
    json_type = {"content-type": "application/json"}
    problem(await http.post("/v1/auth/login", content=huge, headers=json_type), 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer
        for start in range(0, len(huge), 8192):
            yield huge[start : start + 8192]

    streamed = await http.post("/v1/auth/login", content=chunks(), headers=json_type)
    assert "content-length" not in streamed.request.headers
    problem(streamed, 413)


async def test_unknown_paths_and_methods_are_problems_too(http: httpx.AsyncClient) -> None:
    problem(await http.get("/v1/nothing-here"), 404)
    not_allowed = await http.get("/v1/auth/login")
    problem(not_allowed, 405)
    assert not_allowed.headers["allow"] == "POST"


async def test_an_upstream_outage_is_503_with_retry_after(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock
) -> None:
    env = {"MARVELD_UPSTREAM_BREAKER_FAILURES": "1", "MARVELD_UPSTREAM_BREAKER_COOLDOWN": "30s"}
    async with (
        running_daemon(nursery, sim, tmp_path, clock, **env) as m,
        httpx.AsyncClient(base_url=m.http, timeout=TIMEOUT) as http,
    ):
        auth = await bearer(http)
        sim.state.fail_rate = 1.0
        failed = await http.get("/v1/characters", params={"offset": "1"}, headers=auth)
        problem(failed, 503)
        assert int(failed.headers["retry-after"]) >= 1
        clock.advance(10)
        fast = await http.get("/v1/characters", params={"offset": "2"}, headers=auth)
        assert "circuit open" in problem(fast, 503)["detail"]
        assert fast.headers["retry-after"] == "20"  # the breaker's cooldown left


# --- the translation and the time limit, on their own -------------------------------------------


class Throttled(errors.MarveldError):
    """Like the rate limiter's error: any MarveldError that says when to come back."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many requests")
        self.retry_after = retry_after


@pytest.mark.parametrize(
    ("exc", "status", "headers"),
    [
        (errors.PermissionDenied("needs the admin role"), 403, {}),
        (Throttled(2.2), 429, {"Retry-After": "3"}),
        (Throttled(0), 429, {"Retry-After": "1"}),
        (BudgetSpent("the daily budget is spent", retry_after=3600), 503, {"Retry-After": "3600"}),
        (errors.UpstreamUnavailable("timed out"), 503, {"Retry-After": "10"}),
        (errors.UpstreamRejected("nope", status=409, code=409), 400, {}),
        (errors.UpstreamRejected("keys", status=401, code="InvalidCredentials"), 503,
         {"Retry-After": "10"}),
        (errors.MarveldError("something new"), 500, {}),
    ],
)  # fmt: skip
def test_each_domain_error_has_its_status(
    exc: errors.MarveldError, status: int, headers: dict[str, str]
) -> None:
    translated = problem_for(exc)
    assert translated.status == status
    assert translated.headers == headers


def request() -> Request:
    return Request({"type": "http", "method": "GET", "path": "/v1/x", "headers": []})


async def test_a_request_past_the_time_limit_is_504(autojump_clock: trio.abc.Clock) -> None:
    async def hangs(request: Request) -> Response:
        await trio.sleep_forever()

    answer = await gateway._answer(hangs)(request())
    assert answer.status_code == 504
    assert answer.media_type == PROBLEM


async def test_a_bug_is_500_and_a_grouped_domain_error_keeps_its_status() -> None:
    async def buggy(request: Request) -> Response:
        raise RuntimeError("a bug")

    async def grouped(request: Request) -> Response:
        raise ExceptionGroup("in a nursery", [errors.NotFound("character 5 not found")])

    assert (await gateway._answer(buggy)(request())).status_code == 500
    assert (await gateway._answer(grouped)(request())).status_code == 404
