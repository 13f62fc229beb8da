"""Correlation ids: chosen or made per request, on every log line the request causes (the
services' lines in trio included), and returned to the client; one JSON line per request."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from marveld.cli import JsonFormatter
from marveld.correlation import CORRELATION_ID, CorrelationFilter, TextFormatter, choose
from marveld.proto.marvel import v1 as pb
from tests.calls import PASSWORD, TIMEOUT
from tests.conftest import Running

HEX32 = r"[0-9a-f]{32}"


class Captured:
    """The JSON lines marveld's loggers wrote, as ``marveld serve`` writes them to stderr."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def with_id(self, correlation_id: str) -> list[dict[str, Any]]:
        return [e for e in self.lines() if e.get("correlation_id") == correlation_id]


@pytest.fixture
def logs() -> Iterator[Captured]:
    captured = Captured()
    handler = logging.StreamHandler(captured.stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(CorrelationFilter())
    logger = logging.getLogger("marveld")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.parametrize(
    "sent",
    ["2f1c9a1e-7b7d-4a59-9c1e-3f3a9d7c1b2a", "req-42", "a", "trace:00f067aa0ba902b7", "x" * 128],
)
def test_a_sane_client_id_is_kept(sent: str) -> None:
    assert choose([None, sent]) == sent


@pytest.mark.parametrize(
    "sent", ["", " padded", "has space", "line\nbreak", 'quote"d', "é", "x" * 129, "-leading"]
)
def test_anything_else_gets_a_new_id(sent: str) -> None:
    made = choose([sent])
    assert made != sent
    assert len(made) == 32
    assert int(made, 16) >= 0


def test_the_first_sane_header_wins() -> None:
    assert choose(["bad id", "good-id", "other"]) == "good-id"


def record(message: str, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("marveld.test", logging.INFO, __file__, 1, message, (), None)
    made.__dict__.update(extra)
    CorrelationFilter().filter(made)
    return made


def test_lines_outside_a_request_have_no_id() -> None:
    assert "correlation_id" not in json.loads(JsonFormatter().format(record("idle")))
    assert TextFormatter("%(message)s").format(record("idle")) == "idle"


def test_lines_inside_a_request_carry_its_id() -> None:
    token = CORRELATION_ID.set("req-7")
    try:
        entry = json.loads(JsonFormatter().format(record("working", fields={"status": "OK"})))
        text = TextFormatter("%(levelname)s %(message)s").format(record("working"))
    finally:
        CORRELATION_ID.reset(token)
    assert entry["correlation_id"] == "req-7"
    assert entry["status"] == "OK"
    assert text == "INFO working [req-7]"


def test_a_text_line_with_a_traceback_keeps_the_id_on_the_first_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("failed", exc_info=sys.exc_info(), correlation_id="req-8")
    first, *rest = TextFormatter("%(message)s").format(failed).splitlines()
    assert first == "failed [req-8]"
    assert rest[-1] == "ValueError: boom"


def text(metadata: Mapping[str, str | bytes]) -> dict[str, str]:
    return {key: value for key, value in metadata.items() if isinstance(value, str)}


async def call_with_metadata(
    m: Running, method: str, request: Any, reply_type: type[Any], metadata: dict[str, str]
) -> tuple[Any, dict[str, str], dict[str, str]]:
    """A unary call through grpclib's stream API, which shows the response's metadata."""

    request_type: type[Any] = type(request)

    async def go(channel: Channel) -> tuple[Any, dict[str, str], dict[str, str]]:
        async with channel.request(
            method,
            Cardinality.UNARY_UNARY,
            request_type,
            reply_type,
            timeout=TIMEOUT,
            metadata=metadata,
        ) as stream:
            await stream.send_message(request, end=True)
            reply: Any
            try:
                reply = await stream.recv_message()
                await stream.recv_trailing_metadata()
            except GRPCError as exc:
                reply = exc
            assert stream.initial_metadata is not None
            assert stream.trailing_metadata is not None
            return reply, text(stream.initial_metadata), text(stream.trailing_metadata)

    return await m.client.call(go)


async def test_a_grpc_call_logs_one_line_with_the_clients_id_and_returns_it(
    marveld: Running, logs: Captured
) -> None:
    request = pb.RegisterRequest(name="Peter", email="peter@example.com", password=PASSWORD)
    reply, initial, trailing = await call_with_metadata(
        marveld,
        "/marvel.v1.AuthService/Register",
        request,
        pb.UserProfile,
        {"x-correlation-id": "register-42"},
    )
    assert reply.email == "peter@example.com"
    assert initial["x-correlation-id"] == "register-42"
    assert trailing["x-correlation-id"] == "register-42"
    lines = logs.with_id("register-42")
    # The service logged in trio (behind the bridge's hop), then the request line.
    assert any(e["message"].startswith("user ") and "registered" in e["message"] for e in lines)
    [request_line] = [e for e in lines if e.get("face") == "grpc"]
    assert request_line["method"] == "/marvel.v1.AuthService/Register"
    assert request_line["status"] == "OK"
    assert request_line["level"] == "info"
    assert request_line["duration_ms"] >= 0
    assert PASSWORD not in json.dumps(logs.lines())


async def test_a_failed_grpc_call_gets_a_new_id_when_the_clients_is_not_sane(
    marveld: Running, logs: Captured
) -> None:
    reply, initial, trailing = await call_with_metadata(
        marveld,
        "/marvel.v1.UserService/GetMyProfile",
        pb.GetMyProfileRequest(),
        pb.UserProfile,
        {"x-request-id": "not sane", "authorization": "Bearer not-a-token"},
    )
    assert isinstance(reply, GRPCError)
    assert reply.status is Status.UNAUTHENTICATED
    correlation_id = {**initial, **trailing}["x-correlation-id"]
    assert len(correlation_id) == 32
    [line] = [e for e in logs.with_id(correlation_id) if e.get("face") == "grpc"]
    assert line["status"] == "UNAUTHENTICATED"
    assert "not-a-token" not in json.dumps(logs.lines())


async def test_grpc_health_checks_are_logged_at_debug(marveld: Running, logs: Captured) -> None:
    _, initial, _ = await call_with_metadata(
        marveld,
        "/grpc.health.v1.Health/Check",
        HealthCheckRequest(),
        HealthCheckResponse,
        {"x-request-id": "probe-1"},
    )
    assert initial["x-correlation-id"] == "probe-1"
    [line] = logs.with_id("probe-1")
    assert line["level"] == "debug"


async def test_an_http_request_logs_one_line_and_returns_the_id(
    marveld: Running, logs: Captured
) -> None:
    async with httpx.AsyncClient(base_url=marveld.http, timeout=TIMEOUT) as http:
        given = await http.get("/healthz", headers={"x-request-id": "lb-check-9"})
        made = await http.get("/healthz")
        missing = await http.get("/nowhere", headers={"x-correlation-id": "lost-1"})
    assert missing.headers["x-correlation-id"] == "lost-1"
    assert given.headers["x-correlation-id"] == "lb-check-9"
    assert len(made.headers["x-correlation-id"]) == 32
    assert made.headers["x-correlation-id"] != given.headers["x-correlation-id"]
    [probe] = logs.with_id("lb-check-9")
    assert (probe["face"], probe["method"], probe["status"]) == ("http", "GET /healthz", 200)
    assert probe["level"] == "debug"
    [lost] = logs.with_id("lost-1")
    assert (lost["method"], lost["status"], lost["level"]) == ("GET /nowhere", 404, "info")
