"""Numbers and dates past their range, at every entry point, against a running daemon.

Each integer, time and cursor field a client can fill is driven through its boundaries:
int32 and int64 edges, 2**63, 2**64, huge and negative values, years 1 and 9999 with
offsets up to ±14:00, numbers that are not numbers (``NaN``, ``1e400``, ``"123"``,
``true``). Every answer is a success or a named refusal: INVALID_ARGUMENT or 400 naming
the field (UNAUTHENTICATED or 401 for a token), never INTERNAL, UNKNOWN or a 5xx, and the
daemon logs no error.

gRPC requests are written by hand as protobuf bytes (a field can then hold any 64-bit
varint whatever its declared type, e.g. 2**40 in an int32); values no 64-bit varint holds
(2**64 and up, below -2**63) go out as over-long varints, a malformed message. No request
message of ours carries a google.protobuf.Timestamp: times arrive as text
(``modified_since``) and are driven as text. Hypothesis runs in a worker thread making
blocking calls (the test client's own asyncio loop for gRPC, a plain httpx client for HTTP)
while the daemon runs in this test's trio loop; examples are bounded (EXAMPLES each).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marveld.domain.webhooks import SIGNATURE_HEADER, signature_header
from marveld.services.security import MAX_TOKEN_BYTES, key_id
from marveld.sim import SimHandle
from marveld.storage import Store
from tests.calls import TIMEOUT, Raw, my_profile, raw_call, register_and_login, status_of
from tests.conftest import JWT_SECRET, Clock, Running, running_daemon

EXAMPLES = 60
WEBHOOK_SECRET = "ranges-webhook-secret"
SPIDER_MAN = 1009610
FORBIDDEN = {Status.INTERNAL, Status.UNKNOWN}

INT_EDGES = [
    0, 1, -1, 20, 100, 101, 1000, 1001, 1_000_000, 1_000_001, SPIDER_MAN,
    2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32 - 1, 2**32, 2**53, 2**53 + 1, -(2**53),
    2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 2**70, -(2**70), 10**30,
]  # fmt: skip
ints = st.one_of(
    st.sampled_from(INT_EDGES),
    st.sampled_from(INT_EDGES).flatmap(lambda edge: st.integers(edge - 2, edge + 2)),
    st.integers(),
)
# Numbers as JSON and query text: the integers above, and what is not an integer.
NOT_INTEGERS = [
    "1e400", "-1e400", "1.5", "-0", "0.0", "1e3", "NaN", "Infinity", "-Infinity", "true",
    "null", '"7"', "[]", "{}", "9" * 4400, "-" + "9" * 4400,
]  # fmt: skip
# These make the whole body unreadable (not JSON to us), so no member is named.
WHOLE_BODY = {"NaN", "Infinity", "-Infinity", "9" * 4400, "-" + "9" * 4400}
json_numbers = st.one_of(ints.map(str), st.sampled_from(NOT_INTEGERS))
query_numbers = st.one_of(
    ints.map(str),
    st.sampled_from(["", " 1", "1 ", "+5", "0x10", "1_000", "٣", "1e3", "9" * 30, "-" + "9" * 30]),
)

offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
EDGE_TIMES = [
    "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00-14:00", "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59+14:00", "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59-1400", "0001-01-01T00:00:00+1400", "-0001-11-30T00:00:00-0500",
    "0001-01-01", "9999-12-31", "0000-01-01", "10000-01-01", "1899-12-31T23:59:59Z",
    "1900-01-01T00:00:00+00:01", "1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z",
    "2038-01-19T03:14:08Z", "2106-02-07T06:28:16Z", "2014-02-30", "2014-01-31T12:00:00",
    "2014-01-31T24:00:00Z", "2014-01-31T12:00:00+24:00", "2014-01-31T12:00:00-23:59",
    "2014-04-29T14:18:17-0400",
]  # fmt: skip
times = st.one_of(
    st.sampled_from(EDGE_TIMES),
    st.datetimes(timezones=offsets).map(datetime.isoformat),  # years 1 to 9999
    st.datetimes(timezones=offsets).map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%S%z")),  # Marvel's
)

Call = Callable[[Channel], Awaitable[Any]]


# --- protobuf by hand ---------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """A protobuf varint; a negative int64 as its two's complement (10 bytes), and values
    no 64-bit varint holds as an over-long one (a malformed message)."""
    if -(2**63) <= value < 0:
        value += 1 << 64
    value = abs(value)
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def number(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def nested(field: int, data: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(data)) + data


def text(field: int, value: str) -> bytes:
    return nested(field, value.encode())


def fits_a_varint(value: int) -> bool:
    return -(2**63) <= value < 2**64


# --- running the examples ------------------------------------------------------------------------


@pytest.fixture
async def ranged(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock
) -> AsyncIterator[Running]:
    """A daemon with a webhook secret, fast heartbeats (a Subscribe that is accepted shows
    it at once) and a budget no fuzzing exhausts."""
    async with running_daemon(
        nursery,
        sim,
        tmp_path,
        clock,
        MARVELD_WEBHOOK_SECRET=WEBHOOK_SECRET,
        MARVELD_NOTIFICATIONS_HEARTBEAT="0.1s",
        MARVELD_UPSTREAM_DAILY_BUDGET="100000000",
    ) as m:
        yield m


def run_examples(
    caplog: pytest.LogCaptureFixture, strategy: st.SearchStrategy[Any], check: Callable[[Any], str]
) -> Callable[[], Counter[str]]:
    """A blocking function running ``check`` on EXAMPLES values of ``strategy``; ``check``
    asserts and returns the outcome's name. Counts of outcomes come back."""
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # nothing written to the work tree
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def example(value: Any) -> None:
        seen[check(value)] += 1

    def run() -> Counter[str]:
        caplog.set_level(logging.WARNING)
        example()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors][:5]
        return seen

    return run


def grpc_outcome(m: Running, call: Call, field: str, value: int, allowed: set[Status]) -> str:
    """The call's status: OK, or one of ``allowed``; an INVALID_ARGUMENT for a value a
    varint holds names ``field``."""
    assert not allowed & FORBIDDEN
    try:
        m.client.call_blocking(call)
    except GRPCError as exc:
        status, message = exc.status, exc.message or ""
    else:
        return "OK"
    assert status in allowed, f"{status.name} {message!r} for {field}={value!r}"
    if status is Status.INVALID_ARGUMENT and fits_a_varint(value):
        assert field in message, f"{message!r} does not name {field} ({value!r})"
    return status.name


def first_of_stream(path: str, data: bytes, metadata: dict[str, str]) -> Call:
    """A server-streaming call: its first message (a heartbeat at least), or its status."""

    async def go(channel: Channel) -> Raw | None:
        async with channel.request(
            path, Cardinality.UNARY_STREAM, Raw, Raw, timeout=TIMEOUT, metadata=metadata
        ) as stream:
            await stream.send_message(Raw(data), end=True)
            first = await stream.recv_message()
            await stream.cancel()
            return first

    return go


def http_outcome(response: httpx.Response, field: str | None, allowed: set[int]) -> str:
    """A status in ``allowed`` (never 5xx); a 400 is problem+json naming ``field``."""
    assert response.status_code in allowed, f"{response.status_code} {response.text[:300]}"
    assert response.status_code < 500
    if response.status_code == 400 and field is not None:
        body = response.json()
        assert body.get("field") == field, body
    return str(response.status_code)


# --- gRPC: every integer and cursor field --------------------------------------------------------

GRPC_FIELDS: list[tuple[str, str, int, Callable[[int], bytes], set[Status]]] = [
    # (method, field named in errors, field number, the rest of the request, allowed)
    ("/marvel.v1.CharacterService/ListCharacters", "limit", 5,
     lambda v: text(2, "Spider") + number(5, v), {Status.INVALID_ARGUMENT}),
    ("/marvel.v1.CharacterService/ListCharacters", "offset", 6,
     lambda v: text(2, "Spider") + number(6, v), {Status.INVALID_ARGUMENT}),
    ("/marvel.v1.CharacterService/SearchCharacters", "limit", 2,
     lambda v: text(1, "spider") + number(2, v), {Status.INVALID_ARGUMENT}),
    ("/marvel.v1.CharacterService/SearchCharacters", "offset", 3,
     lambda v: text(1, "spider") + number(3, v), {Status.INVALID_ARGUMENT}),
    ("/marvel.v1.CharacterService/GetCharacter", "id", 1,
     lambda v: number(1, v), {Status.INVALID_ARGUMENT, Status.NOT_FOUND}),
    ("/marvel.v1.NotificationService/ListNotifications", "after_cursor", 1,
     lambda v: number(1, v), {Status.INVALID_ARGUMENT, Status.FAILED_PRECONDITION}),
    ("/marvel.v1.NotificationService/ListNotifications", "limit", 2,
     lambda v: number(2, v), {Status.INVALID_ARGUMENT}),
    ("/marvel.v1.NotificationService/UpdateSubscription", "character_ids", 1,
     lambda v: nested(1, number(1, v)), {Status.INVALID_ARGUMENT}),
    ("/marvel.v1.NotificationService/UpdateSubscription", "character_ids", 1,  # packed
     lambda v: nested(1, nested(1, varint(SPIDER_MAN) + varint(v))), {Status.INVALID_ARGUMENT}),
    ("/marvel.v1.AdminService/PurgeCache", "character_id", 2,
     lambda v: number(2, v), {Status.INVALID_ARGUMENT}),
]  # fmt: skip
STREAM_FIELDS: list[tuple[str, Callable[[int], bytes]]] = [
    ("after_cursor", lambda v: number(1, v)),
    ("character_ids", lambda v: nested(2, number(1, v))),
]


async def admin_token(m: Running) -> dict[str, str]:
    auth = await register_and_login(m, "admin@example.com")
    async with Store.open(m.settings.database.path) as store:
        await store.users.set_role("admin@example.com", "admin", datetime.now(UTC))
    return auth


@pytest.mark.parametrize(
    ("path", "field", "build", "allowed"),
    [(path, field, build, allowed) for path, field, _, build, allowed in GRPC_FIELDS],
    ids=[f"{path.rsplit('/', 1)[1]}.{field}" for path, field, *_ in GRPC_FIELDS],
)
async def test_grpc_integer_fields_at_their_edges(
    ranged: Running,
    caplog: pytest.LogCaptureFixture,
    path: str,
    field: str,
    build: Callable[[int], bytes],
    allowed: set[Status],
) -> None:
    auth = await admin_token(ranged)

    def check(value: int) -> str:
        return grpc_outcome(ranged, raw_call(path, build(value), auth), field, value, allowed)

    seen = await trio.to_thread.run_sync(run_examples(caplog, ints, check))
    assert seen["INVALID_ARGUMENT"] > 0, seen


@pytest.mark.parametrize(("field", "build"), STREAM_FIELDS, ids=[f for f, _ in STREAM_FIELDS])
async def test_subscribe_cursor_and_filter_at_their_edges(
    ranged: Running,
    caplog: pytest.LogCaptureFixture,
    field: str,
    build: Callable[[int], bytes],
) -> None:
    auth = await register_and_login(ranged)
    path = "/marvel.v1.NotificationService/Subscribe"
    allowed = {Status.INVALID_ARGUMENT, Status.FAILED_PRECONDITION}

    def check(value: int) -> str:
        call = first_of_stream(path, build(value), auth)
        return grpc_outcome(ranged, call, field, value, allowed)

    seen = await trio.to_thread.run_sync(run_examples(caplog, ints, check))
    assert seen["OK"] > 0, seen
    assert seen["INVALID_ARGUMENT"] > 0, seen


async def test_grpc_modified_since_at_the_edges_of_time(
    ranged: Running, caplog: pytest.LogCaptureFixture
) -> None:
    auth = await register_and_login(ranged)
    path = "/marvel.v1.CharacterService/ListCharacters"

    def check(when: str) -> str:
        call = raw_call(path, text(2, "Spider") + text(3, when), auth)
        return grpc_outcome(ranged, call, "modified_since", 0, {Status.INVALID_ARGUMENT})

    seen = await trio.to_thread.run_sync(run_examples(caplog, times, check))
    assert seen["OK"] > 0, seen
    assert seen["INVALID_ARGUMENT"] > 0, seen


# --- the JSON gateway: query parameters and path ids ------------------------------------------


CHARACTER_PARAMS = [
    ("/v1/characters", {"nameStartsWith": "Spider"}, "limit"),
    ("/v1/characters", {"nameStartsWith": "Spider"}, "offset"),
    ("/v1/characters/params", {"query": "spider"}, "limit"),
    ("/v1/characters/params", {"query": "spider"}, "offset"),
]


@pytest.mark.parametrize(
    ("path", "base", "param"), CHARACTER_PARAMS, ids=[f"{p}?{n}" for p, _, n in CHARACTER_PARAMS]
)
async def test_gateway_integer_parameters_at_their_edges(
    ranged: Running,
    caplog: pytest.LogCaptureFixture,
    path: str,
    base: dict[str, str],
    param: str,
) -> None:
    auth = await register_and_login(ranged)
    with httpx.Client(base_url=ranged.http, headers=auth, timeout=TIMEOUT) as http:

        def check(value: str) -> str:
            response = http.get(path, params={**base, param: value})
            return http_outcome(response, param, {200, 400})

        seen = await trio.to_thread.run_sync(run_examples(caplog, query_numbers, check))
    assert seen["400"] > 0, seen


async def test_gateway_character_ids_and_dates_at_their_edges(
    ranged: Running, caplog: pytest.LogCaptureFixture
) -> None:
    auth = await register_and_login(ranged)
    values = st.one_of(
        query_numbers.filter(bool).map(lambda v: ("id", v)),  # "" is another path
        times.map(lambda t: ("modifiedSince", t)),
    )
    with httpx.Client(base_url=ranged.http, headers=auth, timeout=TIMEOUT) as http:

        def check(value: tuple[str, str]) -> str:
            kind, given_text = value
            if kind == "id":
                response = http.get(f"/v1/characters/{given_text}")
                return http_outcome(response, "id", {200, 400, 404})
            response = http.get("/v1/characters", params={"modifiedSince": given_text})
            return http_outcome(response, "modifiedSince", {200, 400})

        seen = await trio.to_thread.run_sync(run_examples(caplog, values, check))
    assert seen["400"] > 0, seen


async def test_gateway_json_bodies_with_numbers_where_text_belongs(
    ranged: Running, caplog: pytest.LogCaptureFixture
) -> None:
    fields = st.sampled_from(["name", "email", "password"])
    values = st.tuples(st.sampled_from(["register", "login"]), fields, json_numbers)
    with httpx.Client(base_url=ranged.http, timeout=TIMEOUT) as http:

        def check(value: tuple[str, str, str]) -> str:
            route, field, raw_number = value
            good = {"name": "Peter", "email": "peter@example.com", "password": "a fine password"}
            if route == "login":
                del good["name"]
            members = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in good.items() if k != field]
            body = "{" + ",".join([*members, f'"{field}":{raw_number}']) + "}"
            response = http.post(
                f"/v1/auth/{route}",
                content=body.encode(),
                headers={"content-type": "application/json"},
            )
            named = None if raw_number in WHOLE_BODY else field
            # '"7"' is text: a name that registers (or is taken), a password that is wrong.
            return http_outcome(response, named, {201, 400, 401, 409})

        seen = await trio.to_thread.run_sync(run_examples(caplog, values, check))
    assert seen["400"] > 0, seen


# --- webhooks -----------------------------------------------------------------------------------


def signed(body: bytes, at: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if at is None else at
    return {SIGNATURE_HEADER: signature_header(WEBHOOK_SECRET, stamp, body)}


async def test_webhook_ids_times_and_timestamps_at_their_edges(
    ranged: Running, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(time.time())

    def member(field: str, template: str) -> st.SearchStrategy[tuple[str | None, str]]:
        return json_numbers.map(
            lambda n: (None if n in WHOLE_BODY else field, template.replace("N", n))
        )

    bodies = st.one_of(
        member("ids[0]", '{"type":"character.updated","ids":[N]}'),
        member("ids[1]", f'{{"type":"character.added","ids":[{SPIDER_MAN},N]}}'),
        member("occurred_at", '{"type":"character.added","ids":[1],"occurred_at":N}'),
        times.map(
            lambda t: (
                "occurred_at",
                json.dumps({"type": "character.updated", "ids": [SPIDER_MAN], "occurred_at": t}),
            )
        ),
    )
    stamps = st.one_of(
        st.just(now), st.sampled_from([now - 301, now + 301, 0, -1]), ints, st.just(None)
    )
    with httpx.Client(base_url=ranged.http, timeout=TIMEOUT) as http:

        def check(value: tuple[tuple[str | None, str], int | None]) -> str:
            (field, body), stamp = value
            data = body.encode()
            headers = signed(data) if stamp is None else signed(data, stamp)
            response = http.post("/v1/webhooks/marvel", content=data, headers=headers)
            return http_outcome(response, field, {200, 202, 400, 401})

        seen = await trio.to_thread.run_sync(run_examples(caplog, st.tuples(bodies, stamps), check))
    assert seen["400"] > 0, seen
    assert seen["401"] > 0, seen


async def test_a_webhook_time_with_no_utc_equivalent_is_400_naming_it(ranged: Running) -> None:
    async with httpx.AsyncClient(base_url=ranged.http, timeout=TIMEOUT) as http:
        for when in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
            body = json.dumps({"type": "character.updated", "ids": [1], "occurred_at": when})
            r = await http.post("/v1/webhooks/marvel", content=body, headers=signed(body.encode()))
            assert r.status_code == 400, r.text
            assert r.json()["field"] == "occurred_at"
            assert "out of range" in r.json()["detail"]


async def test_webhook_ids_past_marvels_range_are_400_naming_the_id(ranged: Running) -> None:
    async with httpx.AsyncClient(base_url=ranged.http, timeout=TIMEOUT) as http:
        for ids in ([2**63], [SPIDER_MAN, 2**64 + 1], [2**31], [0]):
            body = json.dumps({"type": "character.updated", "ids": ids}).encode()
            r = await http.post("/v1/webhooks/marvel", content=body, headers=signed(body))
            assert r.status_code == 400, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["field"] == f"ids[{len(ids) - 1}]"
        body = json.dumps({"type": "character.updated", "ids": [2**31 - 1]}).encode()
        r = await http.post("/v1/webhooks/marvel", content=body, headers=signed(body))
        assert r.status_code == 202, r.text  # the largest Marvel id is taken


# --- tokens: claims and size ---------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_with(claims: dict[str, str]) -> str:
    """A token signed with the daemon's key whose claims are the given JSON texts."""
    header = json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": key_id(JWT_SECRET)})
    payload = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in claims.items()) + "}"
    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    mac = hmac.new(JWT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def valid_claims(subject: str, now: int) -> dict[str, str]:
    return {
        "sub": json.dumps(subject), "iss": '"marveld"', "aud": '"marveld"', "iat": str(now),
        "nbf": str(now), "exp": str(now + 600), "jti": '"a-token-id"',
    }  # fmt: skip


SUBJECTS = [
    '""', '"no-such-user"', json.dumps("x" * 65), '"\\ud800"', '"caf\\u00e9"', "12345",
    str(2**70), "null", "[]", "{}", "true", '"' + "a" * 5000 + '"',
]  # fmt: skip


async def test_token_claims_at_their_edges_on_both_ports(
    ranged: Running, caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    auth = await register_and_login(ranged)
    profile = await ranged.client.call(my_profile(auth))
    now = int(clock().timestamp())
    claim_values = st.one_of(
        st.sampled_from(["iat", "nbf", "exp"]).flatmap(
            lambda name: st.one_of(
                json_numbers, st.sampled_from([str(now), str(now + 3600), str(now - 5)])
            ).map(lambda v: (name, v))
        ),
        st.sampled_from(SUBJECTS).map(lambda v: ("sub", v)),
    )
    with httpx.Client(base_url=ranged.http, timeout=TIMEOUT) as http:

        def check(value: tuple[str, str]) -> str:
            name, claim = value
            token = token_with({**valid_claims(profile.id, now), name: claim})
            headers = {"authorization": f"Bearer {token}"}
            grpc = grpc_outcome(ranged, my_profile(headers), name, 0, {Status.UNAUTHENTICATED})
            web = http_outcome(http.get("/v1/users/my-profile", headers=headers), None, {200, 401})
            assert (grpc, web) in {("OK", "200"), ("UNAUTHENTICATED", "401")}, value
            return web

        seen = await trio.to_thread.run_sync(run_examples(caplog, claim_values, check))
    assert seen["200"] > 0, seen
    assert seen["401"] > 0, seen


REFUSED_CLAIMS = [
    ("exp", str(2**70), "exp is out of range"),
    ("exp", str(10**20), "exp is out of range"),
    ("exp", "253370764801", "exp is out of range"),  # 9999-01-01T00:00:01Z
    ("iat", "-1", "iat is out of range"),
    ("exp", '"99999999999"', "exp is not a number"),  # PyJWT takes int("...")
    ("nbf", "true", "nbf is not a number"),
    ("sub", json.dumps("x" * 65), "sub is not a user id"),
    ("sub", '"caf\\u00e9"', "sub is not a user id"),
    ("sub", '"\\ud800"', "sub is not a user id"),  # was INTERNAL: SQLite cannot bind it
]


@pytest.mark.parametrize(("claim", "value", "reason"), REFUSED_CLAIMS)
async def test_token_claims_out_of_range_are_unauthenticated_saying_which(
    ranged: Running, clock: Clock, claim: str, value: str, reason: str
) -> None:
    auth = await register_and_login(ranged)
    profile = await ranged.client.call(my_profile(auth))
    token = token_with({**valid_claims(profile.id, int(clock().timestamp())), claim: value})
    headers = {"authorization": f"Bearer {token}"}
    error = await status_of(ranged, my_profile(headers))
    assert error.status is Status.UNAUTHENTICATED
    assert reason in (error.message or "")
    async with httpx.AsyncClient(base_url=ranged.http, timeout=TIMEOUT) as http:
        r = await http.get("/v1/users/my-profile", headers=headers)
    assert r.status_code == 401
    assert reason in r.json()["detail"]


async def test_times_up_to_the_last_year_are_taken(ranged: Running, clock: Clock) -> None:
    auth = await register_and_login(ranged)
    profile = await ranged.client.call(my_profile(auth))
    now = int(clock().timestamp())
    for exp in (2**31, 253_370_764_800, now + 600.5):
        token = token_with({**valid_claims(profile.id, now), "exp": str(exp)})
        reply = await ranged.client.call(my_profile({"authorization": f"Bearer {token}"}))
        assert reply.id == profile.id


async def test_an_oversized_token_is_refused_by_its_size_before_parsing(ranged: Running) -> None:
    auth = await register_and_login(ranged)
    for size in (MAX_TOKEN_BYTES + 1, 12_000):
        headers = {"authorization": "Bearer " + "a" * size}
        error = await status_of(ranged, my_profile(headers))
        expected = f"the bearer token is {size} bytes; at most {MAX_TOKEN_BYTES} are accepted"
        assert (error.status, error.message) == (Status.UNAUTHENTICATED, expected)
        # The connection is still usable: the next call on the same channel is served.
        assert (await ranged.client.call(my_profile(auth))).email == "peter@example.com"
        async with httpx.AsyncClient(base_url=ranged.http, timeout=TIMEOUT) as http:
            r = await http.get("/v1/users/my-profile", headers=headers)
            assert r.status_code == 401
            assert r.json()["detail"] == expected
            assert 'error="invalid_token"' in r.headers["www-authenticate"]
            assert (await http.get("/v1/users/my-profile", headers=auth)).status_code == 200
    # A token of exactly the limit is parsed (and, being junk, refused as not valid).
    error = await status_of(ranged, my_profile({"authorization": "Bearer " + "a" * 8192}))
    assert error.status is Status.UNAUTHENTICATED
    assert "bytes" not in (error.message or "")
    # Over HTTP a header may carry Latin-1: a token is base64url, so that is not one.
    async with httpx.AsyncClient(base_url=ranged.http, timeout=TIMEOUT) as http:
        r = await http.get("/v1/users/my-profile", headers={b"authorization": b"Bearer a\xe9b"})
    assert (r.status_code, r.json()["detail"]) == (401, "access token is not valid")
