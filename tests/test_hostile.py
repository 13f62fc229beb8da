"""Every RPC driven with generated hostile input against a running daemon: each answer is a
reply or a status the contract names for that call (never INTERNAL or UNKNOWN), and the
daemon logs no error.

Hypothesis runs in a worker thread and makes blocking calls through the test client's own
asyncio loop while the daemon runs in this test's trio loop. Examples are bounded
(EXAMPLES per RPC; strings up to a few hundred KB, one just over the 1 MiB request cap) so
the file runs in seconds. Hostile means: NUL and control characters, SQL and FTS5 syntax,
template and path tricks, bidi overrides, zero-width and combining characters, 100 KB
strings, extreme integers, forged and malformed tokens, and raw bytes that are not the
message at all.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marveld.proto.marvel import v1 as pb
from tests.calls import PASSWORD, TIMEOUT, raw_call, register_and_login
from tests.conftest import Running

EXAMPLES = 80
Call = Callable[[Channel], Awaitable[Any]]

HOSTILE = [
    "", " ", "\t\n", "\x00", "a\x00b", "\x1b[31mred", "\x7f", "\x85", "\u2028",
    "' OR '1'='1", "'; DROP TABLE users; --", '" OR ""="', "1; SELECT * FROM users",
    "%", "_", "%00", "\\", "*", "spider* NEAR(man)", 'name:"spider" OR description:*',
    "^hulk", "NOT AND OR", "(", ")", '"', "''", "{{7*7}}", "${jndi:ldap://x/a}",
    "<script>alert(1)</script>", "../../etc/passwd", "\r\nX-Injected: 1", "a@b.c",
    "\u202espider", "\u2066x\u2069", "\u200b", "\u200d", "\ufeff", "e\u0301", "\u0301" * 50,
    "\U0001f4a5" * 1000, "\ud7ff\ue000\uffff", "Z" * 300, "A" * 100_000,
    "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+01:00", "2014-13-45", "1899-12-31",
    "-name", "NAME", "modified ", "password12", "x" * (1 << 20),
]  # fmt: skip
INT32_EDGES = [0, 1, -1, 20, 100, 101, 1_000_000, 1_000_001, 2**31 - 1, -(2**31)]
INT64_EDGES = [0, 1, -1, 1009610, 2**31 - 1, 2**31, 2**63 - 1, -(2**63)]

texts = st.one_of(
    st.text(max_size=40),  # any Unicode but surrogates: protobuf strings are UTF-8
    st.sampled_from(HOSTILE),
    st.tuples(st.sampled_from(HOSTILE), st.text(max_size=10), st.sampled_from(HOSTILE)).map(
        "".join
    ),
)


offsets = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))
EDGE_TIMES = [
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00", "0001-01-01", "9999-12-31",
    "1899-12-31T23:59:59Z", "1900-01-01", "2014-02-30", "2014-01-31T12:00:00", "2014-01-31Z",
]  # fmt: skip
times = st.one_of(
    st.sampled_from(EDGE_TIMES),
    st.datetimes(timezones=offsets).map(datetime.isoformat),  # year 1 to 9999, any offset
    st.dates().map(date.isoformat),
    texts,
)
int32s = st.one_of(st.none(), st.sampled_from(INT32_EDGES), st.integers(-(2**31), 2**31 - 1))
int64s = st.one_of(st.sampled_from(INT64_EDGES), st.integers(-(2**63), 2**63 - 1))
# Metadata values must be printable ASCII (grpclib's client refuses anything else).
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)
FORGED = [
    "Bearer", "Bearer ", "bearer x.y.z", "Bearer eyJhbGciOiJub25lIn0.e30.",
    "Bearer a.b.c.d", "Bearer ....", "Bearer " + "A" * 5000, "Token abc", "Basic YTpi",
]  # fmt: skip

FORBIDDEN = {Status.INTERNAL, Status.UNKNOWN}
CHARACTER_STATUSES = {
    Status.INVALID_ARGUMENT, Status.UNAUTHENTICATED, Status.RESOURCE_EXHAUSTED, Status.NOT_FOUND,
}  # fmt: skip


def one_hostile(
    message: type, valid: dict[str, Any], hostile: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    """A valid request with one field (or, now and then, every field) hostile: so that a
    hostile value gets past the checks of the other fields and reaches the deeper ones."""
    one = st.sampled_from(sorted(hostile)).flatmap(
        lambda name: hostile[name].map(lambda value: message(**{**valid, name: value}))
    )
    return st.one_of(one, one, one, st.fixed_dictionaries(hostile).map(lambda f: message(**f)))


def authorizations(valid: dict[str, str]) -> st.SearchStrategy[dict[str, str] | None]:
    """The real token now and then; mostly junk, forged or malformed ones."""
    junk = st.one_of(
        st.none(),
        st.sampled_from(FORGED),
        header_text,
        header_text.map(lambda text: f"Bearer {text}"),
    ).map(lambda value: None if value is None else {"authorization": value})
    return st.one_of(st.just(valid), junk)


async def drive(
    m: Running,
    caplog: pytest.LogCaptureFixture,
    strategy: st.SearchStrategy[Any],
    make_call: Callable[[Any], Call],
    allowed: set[Status],
) -> Counter[str]:
    """Run the examples; fail on a status outside ``allowed`` or on any error logged."""
    assert not allowed & FORBIDDEN
    seen: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,  # nothing written to the work tree
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def example(value: Any) -> None:
        try:
            m.client.call_blocking(make_call(value))
            status, message = Status.OK, ""
        except GRPCError as exc:
            status, message = exc.status, exc.message or ""
        seen[status.name] += 1
        assert status is Status.OK or status in allowed, f"{status.name} {message!r} {value!r}"

    caplog.set_level(logging.WARNING)
    await trio.to_thread.run_sync(example)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors][:5]
    return seen


async def test_register(marveld: Running, caplog: pytest.LogCaptureFixture) -> None:
    def call(request: pb.RegisterRequest) -> Call:
        async def go(channel: Channel) -> object:
            return await pb.AuthServiceStub(channel).register(request, timeout=TIMEOUT)

        return go

    requests = one_hostile(
        pb.RegisterRequest,
        {"name": "Peter", "email": "peter@example.com", "password": "a fine password"},
        {
            "name": texts,
            "email": st.one_of(texts, st.emails(), texts.map(lambda t: f"{t[:60]}@example.com")),
            "password": st.one_of(texts, st.text(min_size=10, max_size=30)),
        },
    )
    allowed = {Status.INVALID_ARGUMENT, Status.ALREADY_EXISTS, Status.RESOURCE_EXHAUSTED}
    seen = await drive(marveld, caplog, requests, call, allowed)
    assert seen["INVALID_ARGUMENT"] > 0


async def test_login(marveld: Running, caplog: pytest.LogCaptureFixture) -> None:
    await register_and_login(marveld, "known@example.com")

    def call(request: pb.LoginRequest) -> Call:
        async def go(channel: Channel) -> object:
            return await pb.AuthServiceStub(channel).login(request, timeout=TIMEOUT)

        return go

    requests = one_hostile(
        pb.LoginRequest,
        {"email": "known@example.com", "password": PASSWORD},
        {"email": st.one_of(texts, st.emails()), "password": texts},
    )
    allowed = {Status.UNAUTHENTICATED, Status.RESOURCE_EXHAUSTED}
    seen = await drive(marveld, caplog, requests, call, allowed)
    assert seen["UNAUTHENTICATED"] > 0


async def test_get_my_profile(marveld: Running, caplog: pytest.LogCaptureFixture) -> None:
    valid = await register_and_login(marveld)

    def call(auth: dict[str, str] | None) -> Call:
        async def go(channel: Channel) -> object:
            return await pb.UserServiceStub(channel).get_my_profile(
                pb.GetMyProfileRequest(), metadata=auth, timeout=TIMEOUT
            )

        return go

    seen = await drive(marveld, caplog, authorizations(valid), call, {Status.UNAUTHENTICATED})
    assert seen["OK"] > 0
    assert seen["UNAUTHENTICATED"] > 0


async def test_character_calls_with_junk_authorization(
    marveld: Running, caplog: pytest.LogCaptureFixture
) -> None:
    valid = await register_and_login(marveld)

    def call(auth: dict[str, str] | None) -> Call:
        async def go(channel: Channel) -> object:
            return await pb.CharacterServiceStub(channel).get_character(
                pb.GetCharacterRequest(id=1009610), metadata=auth, timeout=TIMEOUT
            )

        return go

    await drive(marveld, caplog, authorizations(valid), call, {Status.UNAUTHENTICATED})


async def test_list_characters(marveld: Running, caplog: pytest.LogCaptureFixture) -> None:
    valid = await register_and_login(marveld)
    requests = one_hostile(
        pb.ListCharactersRequest,
        {"name_starts_with": "Spider", "modified_since": "2010-01-01", "order_by": "-modified"},
        {
            "name": texts,
            "name_starts_with": texts,
            "modified_since": times,
            "order_by": texts,
            "limit": int32s,
            "offset": int32s,
        },
    )

    def call(request: pb.ListCharactersRequest) -> Call:
        async def go(channel: Channel) -> object:
            return await pb.CharacterServiceStub(channel).list_characters(
                request, metadata=valid, timeout=TIMEOUT
            )

        return go

    allowed = CHARACTER_STATUSES - {Status.NOT_FOUND, Status.UNAUTHENTICATED}
    seen = await drive(marveld, caplog, requests, call, allowed)
    assert seen["INVALID_ARGUMENT"] > 0


async def test_search_characters(marveld: Running, caplog: pytest.LogCaptureFixture) -> None:
    valid = await register_and_login(marveld)
    requests = one_hostile(
        pb.SearchCharactersRequest,
        {"query": "spider", "limit": 5},
        {"query": texts, "limit": int32s, "offset": int32s},
    )

    def call(request: pb.SearchCharactersRequest) -> Call:
        async def go(channel: Channel) -> object:
            return await pb.CharacterServiceStub(channel).search_characters(
                request, metadata=valid, timeout=TIMEOUT
            )

        return go

    allowed = CHARACTER_STATUSES - {Status.NOT_FOUND, Status.UNAUTHENTICATED}
    seen = await drive(marveld, caplog, requests, call, allowed)
    assert seen["INVALID_ARGUMENT"] > 0


async def test_get_character(marveld: Running, caplog: pytest.LogCaptureFixture) -> None:
    valid = await register_and_login(marveld)

    def call(marvel_id: int) -> Call:
        async def go(channel: Channel) -> object:
            return await pb.CharacterServiceStub(channel).get_character(
                pb.GetCharacterRequest(id=marvel_id), metadata=valid, timeout=TIMEOUT
            )

        return go

    allowed = {Status.INVALID_ARGUMENT, Status.NOT_FOUND}
    seen = await drive(marveld, caplog, int64s, call, allowed)
    assert seen["INVALID_ARGUMENT"] > 0


@pytest.mark.parametrize(
    "path",
    [
        "/marvel.v1.AuthService/Register",
        "/marvel.v1.AuthService/Login",
        "/marvel.v1.UserService/GetMyProfile",
        "/marvel.v1.CharacterService/ListCharacters",
        "/marvel.v1.CharacterService/SearchCharacters",
        "/marvel.v1.CharacterService/GetCharacter",
    ],
)
async def test_raw_bytes_that_are_not_the_message(
    marveld: Running, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    valid = await register_and_login(marveld)
    every: set[Status] = set(Status) - FORBIDDEN - {Status.OK}
    await drive(
        marveld, caplog, st.binary(max_size=300), lambda data: raw_call(path, data, valid), every
    )
