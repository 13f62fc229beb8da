"""JSON bodies a client can send but nothing should take: nested past the limit, holding a
lone surrogate, a member twice, NaN. Each is a 400 problem+json naming the member where
there is one, on the gateway's routes and on the webhook receiver, sent as raw bytes over
a real socket; the same text over gRPC (as UTF-8 it cannot be spelled) is INVALID_ARGUMENT.
The reader itself (``domain.json_body``) is checked on its edges too."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from grpclib.const import Status

from marveld.domain.errors import InvalidArgument
from marveld.domain.json_body import MAX_DEPTH, JsonInvalid, parse_json
from marveld.domain.users import check_name, check_password, normalize_email
from marveld.domain.webhooks import SIGNATURE_HEADER, signature_header
from marveld.sim import SimHandle
from tests.calls import PASSWORD, TIMEOUT, raw_call, register_and_login, status_of
from tests.conftest import Clock, Running, running_daemon

WEBHOOK_SECRET = "json-bodies-webhook-secret"
PROBLEM = "application/problem+json"
SPIDER_MAN = 1009610


@pytest.fixture
async def hooked(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock
) -> AsyncIterator[Running]:
    async with running_daemon(
        nursery, sim, tmp_path, clock, MARVELD_WEBHOOK_SECRET=WEBHOOK_SECRET
    ) as m:
        yield m


async def raw_post(
    m: Running, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """POST ``body`` exactly as given over a fresh socket; the status, headers and JSON."""
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{m.endpoints.http_port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", m.endpoints.http_port)
        async with stream:
            await stream.send_all("\r\n".join(head).encode() + b"\r\n\r\n" + body)
            answer = bytearray()
            while chunk := await stream.receive_some(65536):
                answer += chunk
    response_head, _, content = bytes(answer).partition(b"\r\n\r\n")
    status_line, *header_lines = response_head.decode("latin-1").split("\r\n")
    found = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), found, json.loads(content)


def problem(answer: tuple[int, dict[str, str], Any], field: str | None) -> str:
    """The detail of a 400 problem naming ``field``."""
    status, headers, body = answer
    assert status == 400, body
    assert headers["content-type"] == PROBLEM
    assert body.get("field") == field, body
    assert body["detail"]
    detail: str = body["detail"]
    return detail


DEEP = [
    b"[" * 60_000,  # under the 64 KiB body limit
    b'{"name":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1),
]


@pytest.mark.parametrize("path", ["/v1/auth/register", "/v1/auth/login"])
async def test_deeply_nested_bodies_are_400_on_every_json_route(
    marveld: Running, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    caplog.set_level(logging.WARNING)
    for body in DEEP:
        detail = problem(await raw_post(marveld, path, body), None)
        assert f"deeper than {MAX_DEPTH} levels" in detail
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


LONE = "correct horse \\ud800 battery"  # the JSON escape of a lone surrogate


@pytest.mark.parametrize("field", ["name", "email", "password"])
async def test_a_lone_surrogate_in_register_is_400_naming_the_field(
    marveld: Running, caplog: pytest.LogCaptureFixture, field: str
) -> None:
    caplog.set_level(logging.WARNING)
    good = {"name": "Peter", "email": "peter@example.com", "password": PASSWORD}
    members = [f'"{k}":"{LONE if k == field else v}"' for k, v in good.items()]
    body = ("{" + ",".join(members) + "}").encode()
    detail = problem(await raw_post(marveld, "/v1/auth/register", body), field)
    assert "lone surrogate" in detail
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # Nothing was registered: the same account with valid text is created now.
    answer = await raw_post(marveld, "/v1/auth/register", json.dumps(good).encode())
    assert answer[0] == 201


async def test_a_lone_surrogate_in_login_is_400_and_the_daemon_still_serves(
    marveld: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await register_and_login(marveld)
    for field, body in {
        "password": f'{{"email":"peter@example.com","password":"{LONE}"}}',
        "email": f'{{"email":"peter\\udfff@example.com","password":"{PASSWORD}"}}',
        "\\ud800": f'{{"\\ud800":"x","email":"peter@example.com","password":"{PASSWORD}"}}',
    }.items():
        problem(await raw_post(marveld, "/v1/auth/login", body.encode()), field)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    good = json.dumps({"email": "peter@example.com", "password": PASSWORD}).encode()
    assert (await raw_post(marveld, "/v1/auth/login", good))[0] == 200


async def test_duplicated_members_nan_and_bad_utf8_are_400(marveld: Running) -> None:
    twice = f'{{"email":"a@example.com","email":"b@example.com","password":"{PASSWORD}"}}'
    assert "more than once" in problem(
        await raw_post(marveld, "/v1/auth/login", twice.encode()), "email"
    )
    nan = b'{"email":"a@example.com","password":NaN}'
    assert "NaN" in problem(await raw_post(marveld, "/v1/auth/login", nan), None)
    latin1 = '{"email":"a@example.com","password":"caf\xe9 caf\xe9 caf\xe9"}'.encode("latin-1")
    assert "not UTF-8" in problem(await raw_post(marveld, "/v1/auth/login", latin1), None)


def signed(body: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: signature_header(WEBHOOK_SECRET, int(time.time()), body)}


async def test_the_webhook_receiver_reads_bodies_the_same_way(
    hooked: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    path = "/v1/webhooks/marvel"
    cases: dict[bytes, tuple[str | None, str]] = {
        b"[" * 60_000: (None, "deeper than"),
        b'{"type":"character.updated","ids":' + b"[" * 40 + b"]" * 40 + b"}": (None, "deeper"),
        b'{"type":"character.updated","ids":[1],"occurred_at":"\\ud800"}': (
            "occurred_at",
            "lone surrogate",
        ),
        b'{"type":"character.\\udc00","ids":[1]}': ("type", "lone surrogate"),
        b'{"type":"character.updated","ids":[1],"ids":[2]}': ("ids", "more than once"),
        b'{"type":"character.updated","ids":[Infinity]}': (None, "Infinity"),
    }
    for body, (field, words) in cases.items():
        status, headers, answer = await raw_post(hooked, path, body, signed(body))
        assert (status, headers["content-type"]) == (400, PROBLEM), answer
        assert answer.get("field") == field, answer
        assert words in answer["detail"], answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    body = json.dumps({"type": "character.updated", "ids": [SPIDER_MAN]}).encode()
    assert (await raw_post(hooked, path, body, signed(body)))[0] == 202


async def test_grpc_text_that_is_not_utf8_is_invalid_argument(marveld: Running) -> None:
    """The UTF-8 spelling of a surrogate (ED A0 80) in Register's name and Login's password."""
    lone = b"\xed\xa0\x80"
    register = b"\x0a\x03" + lone + b"\x12\x11peter@example.com\x1a\x15" + PASSWORD.encode()
    login = b"\x0a\x11peter@example.com\x12\x03" + lone
    for path, data in [
        ("/marvel.v1.AuthService/Register", register),
        ("/marvel.v1.AuthService/Login", login),
    ]:
        error = await status_of(marveld, raw_call(path, data))
        assert error.status is Status.INVALID_ARGUMENT, error


# --- the reader on its own ------------------------------------------------------------------


def test_nesting_up_to_the_limit_is_read_and_brackets_in_strings_do_not_count() -> None:
    at_limit = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert parse_json(at_limit) == parse_json(at_limit)  # parsed, no error
    with pytest.raises(JsonInvalid, match="deeper"):
        parse_json(b"[" + at_limit + b"]")
    text = '{"a":"' + "[{" * 1000 + '\\"]' + '"}'
    assert parse_json(text.encode()) == {"a": "[{" * 1000 + '"]'}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"a":{"b":["ok","\\ud83d"]}}', "a.b[1]"),
        (b'{"a":[{"\\udfff":1}]}', "a[0].\\udfff"),
        (b'["\\udc00\\ud800"]', "[0]"),
        (b'{"a":1,"a":1}', "a"),
    ],
)
def test_the_member_at_fault_is_named_by_its_path(raw: bytes, field: str) -> None:
    with pytest.raises(JsonInvalid) as caught:
        parse_json(raw)
    assert caught.value.field == field


def test_a_surrogate_pair_is_a_character_not_an_error() -> None:
    assert parse_json(b'{"name":"\\ud83d\\udca5"}') == {"name": "\U0001f4a5"}


@pytest.mark.parametrize(
    "raw", [b"", b"nul", b"[1,]", b"\xef\xbb\xbf{}", b"1" * 5000, b"[-Infinity]"]
)
def test_what_is_not_json_is_refused_as_a_whole(raw: bytes) -> None:
    with pytest.raises(JsonInvalid) as caught:
        parse_json(raw)
    assert caught.value.field is None


@pytest.mark.parametrize(
    ("check", "field"),
    [(check_name, "name"), (normalize_email, "email"), (check_password, "password")],
)
def test_the_account_checks_refuse_lone_surrogates_whatever_face_sent_them(
    check: Any, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check("peter\ud800@example.com")
    assert caught.value.field == field
