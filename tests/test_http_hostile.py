"""Hostile peers on the HTTP port, as raw bytes over real sockets against a real daemon:
connections that never send a request are closed after ``http.handshake_timeout``, the
port holds at most ``http.max_connections`` (one WARNING a minute past it), HTTP/2 is not
spoken, and an answer sent before the body was read closes the connection, with the same
correlation id and problem+json body as every other answer."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import pytest
import trio

from marveld.listen import WARNING_INTERVAL_SECONDS, ConnectionCap
from marveld.sim import SimHandle
from marveld.web.limits import MAX_BODY_BYTES, MAX_HEADER_BYTES
from tests.conftest import Clock, Running, running_daemon

SILENT = 1000
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
HEALTHZ_THEN_CLOSE = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def until_eof(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    try:
        while chunk := await stream.receive_some(65536):
            answer += chunk
    except trio.BrokenResourceError:  # closed with our bytes unread: a reset
        pass
    return answer


async def one_answer(stream: trio.SocketStream) -> bytes:
    """One whole answer with a Content-Length body, the connection left open."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += await stream.receive_some(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(header(head, b"content-length"))
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


def header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name!r} header in {head!r}")


def chunked(total: int, chunk: int = 1 << 16) -> bytes:
    piece = b"%x\r\n%s\r\n" % (chunk, b"x" * chunk)
    return piece * (total // chunk) + b"0\r\n\r\n"


async def test_connections_that_send_no_whole_request_are_closed_after_the_handshake_timeout(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock
) -> None:
    env = {"MARVELD_HTTP_HANDSHAKE_TIMEOUT": "500ms", "MARVELD_HTTP_MAX_CONNECTIONS": "5000"}
    async with running_daemon(nursery, sim, tmp_path, clock, **env) as running:
        port = running.endpoints.http_port
        baseline = open_fds()
        partial = [b"GET /heal", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "]
        streams = [await connect(port) for _ in range(SILENT)]
        for i, stream in enumerate(streams[:20]):  # a few send half a request line or head
            await stream.send_all(partial[i % 2])
        closed = 0

        async def wait_closed(stream: trio.SocketStream) -> None:
            nonlocal closed
            assert await until_eof(stream) == b""  # closed without an answer
            closed += 1

        # Closed by the handshake timeout (500 ms), long before the idle timeout (20 s).
        with trio.fail_after(10):
            async with trio.open_nursery() as waiting:
                for stream in streams:
                    waiting.start_soon(wait_closed, stream)
        assert closed == SILENT
        for stream in streams:
            await stream.aclose()
        assert open_fds() <= baseline + 5  # the daemon's descriptors are back

        # A connection that sent a whole request has the idle timeout from then on.
        async with await connect(port) as stream:
            await stream.send_all(HEALTHZ)
            with trio.fail_after(10):
                assert (await one_answer(stream)).startswith(b"HTTP/1.1 200 ")
            with trio.move_on_after(1.5):  # three handshake timeouts: still open
                assert await stream.receive_some(1) == b"never"
            await stream.send_all(HEALTHZ)
            with trio.fail_after(10):
                assert (await one_answer(stream)).startswith(b"HTTP/1.1 200 ")


async def test_a_connection_past_the_cap_is_closed_at_once_with_one_warning(
    nursery: trio.Nursery,
    sim: SimHandle,
    tmp_path: Path,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = 5
    env = {"MARVELD_HTTP_MAX_CONNECTIONS": str(cap)}
    async with running_daemon(nursery, sim, tmp_path, clock, **env) as running:
        port = running.endpoints.http_port
        held = [await connect(port) for _ in range(cap)]
        with trio.fail_after(10):
            for stream in held:  # each one served: all of them admitted
                await stream.send_all(HEALTHZ)
                assert (await one_answer(stream)).startswith(b"HTTP/1.1 200 ")
            for _ in range(3):  # past the cap: closed at once, unanswered
                async with await connect(port) as refused:
                    with contextlib.suppress(trio.BrokenResourceError):
                        await refused.send_all(HEALTHZ)
                    assert await until_eof(refused) == b""
            for stream in held:  # the admitted ones are untouched
                await stream.send_all(HEALTHZ)
                assert (await one_answer(stream)).startswith(b"HTTP/1.1 200 ")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            f"http: {cap} connections open, the most allowed (http.max_connections); "
            "refused 1 new connection(s) since the last warning"
        ]

        # Once one of them closes, there is room again (once the server has seen the close).
        await held.pop().aclose()
        with trio.fail_after(10):
            answer = b""
            while not answer:
                async with await connect(port) as stream:
                    with contextlib.suppress(trio.BrokenResourceError):
                        await stream.send_all(HEALTHZ_THEN_CLOSE)
                    answer = await until_eof(stream)
        assert answer.startswith(b"HTTP/1.1 200 ")
        for stream in held:
            await stream.aclose()
        no_errors(caplog)


def test_the_cap_warns_at_most_once_a_minute_with_the_refusals_since(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    cap = ConnectionCap("http", 2, "http.max_connections", clock=lambda: now[0])
    assert cap.admit()
    assert cap.admit()
    assert not any(cap.admit() for _ in range(10))
    now[0] += WARNING_INTERVAL_SECONDS
    assert not cap.admit()
    cap.release()
    assert cap.admit()
    assert [r.getMessage().rsplit("; ", 1)[1] for r in caplog.records] == [
        "refused 1 new connection(s) since the last warning",
        "refused 10 new connection(s) since the last warning",
    ]


async def test_http2_is_not_spoken_on_the_http_port(marveld: Running) -> None:
    port = marveld.endpoints.http_port
    with trio.fail_after(10):
        async with await connect(port) as stream:  # prior knowledge: closed, no answer
            await stream.send_all(H2_PREFACE + H2_EMPTY_SETTINGS)
            assert await until_eof(stream) == b""
        async with await connect(port) as stream:  # an h2c upgrade: answered in HTTP/1.1
            await stream.send_all(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            )
            answer = await one_answer(stream)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b'{"status":"ok"}')


def assert_refusal(answer: bytes, status: int) -> dict[str, object]:
    """One problem+json answer with the correlation id, that closed the connection."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert body.startswith(b"{"), answer[:700]
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:700]
    assert head.count(b"HTTP/1.1") == 1  # and nothing after it: the next request unread
    assert header(head, b"content-type") == b"application/problem+json"
    assert header(head, b"connection") == b"close"
    correlation_id = header(head, b"x-correlation-id").decode()
    problem: dict[str, object] = json.loads(body)
    assert problem["status"] == status
    assert problem.get("correlation_id", correlation_id) == correlation_id
    return problem


async def test_an_answer_sent_before_the_body_was_read_closes_the_connection(
    marveld: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="marveld.web.access_log")  # /healthz: DEBUG
    port = marveld.endpoints.http_port
    post = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    over_the_limit = b"Content-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)
    cases = [
        # The port's limits (web/limits.py): a body announced over 1 MiB, a header block.
        (post % b"/v1/auth/register" + over_the_limit, 413, "body"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (b"a" * MAX_HEADER_BYTES),
            431,
            "headers",
        ),
        # The app's own refusals part-way through a chunked body (64 KiB), and one sent
        # before any of it was read.
        (
            post % b"/v1/auth/register" + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(1 << 18),
            413,
            None,
        ),
        (
            post % b"/v1/webhooks/marvel"
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + chunked(1 << 18),
            413,
            None,
        ),
        (
            b"POST /nowhere HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(1 << 18),
            404,
            None,
        ),
    ]
    for request, status, field in cases:
        for _ in range(20):
            async with await connect(port) as stream:
                with trio.fail_after(10):
                    # Closed before it had all of it, maybe: the answer is there still.
                    with contextlib.suppress(trio.BrokenResourceError):
                        await stream.send_all(request + HEALTHZ)
                    answer = await until_eof(stream)
            problem = assert_refusal(answer, status)
            if field is not None:
                assert problem["field"] == field
    access = [r.getMessage() for r in caplog.records if r.name == "marveld.web.access_log"]
    assert sum(line.startswith("http POST /v1/auth/register 413 ") for line in access) == 40
    assert sum(line.startswith("http POST /v1/webhooks/marvel 413 ") for line in access) == 20
    assert sum(line.startswith("http GET /healthz 431 ") for line in access) == 20
    no_errors(caplog)


async def test_a_body_read_to_its_end_keeps_the_connection(marveld: Running) -> None:
    port = marveld.endpoints.http_port
    body = b'{"email": "x@example.com", "password": "wrong password"}'
    login = (
        b"POST /v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with await connect(port) as stream:
        with trio.fail_after(10):
            await stream.send_all(login)
            first = await one_answer(stream)
            await stream.send_all(HEALTHZ)
            second = await one_answer(stream)
    assert first.startswith(b"HTTP/1.1 401 ")
    assert b"connection: close" not in first.lower()
    assert second.startswith(b"HTTP/1.1 200 ")


async def test_a_request_trickled_a_byte_at_a_time_is_answered(marveld: Running) -> None:
    """Nothing of HTTP is built for a connection until its first request's head is in
    (marveld/web/server.py): a slow but honest client is served all the same, a pipelined
    second request included."""
    port = marveld.endpoints.http_port
    with trio.fail_after(10):
        async with await connect(port) as stream:
            for byte in HEALTHZ + HEALTHZ_THEN_CLOSE:
                await stream.send_all(bytes([byte]))
            answers = await until_eof(stream)
    assert answers.count(b"HTTP/1.1 200 ") == 2, answers


async def test_a_head_cut_short_by_the_peers_eof_gets_no_answer_and_no_error(
    marveld: Running, caplog: pytest.LogCaptureFixture
) -> None:
    port = marveld.endpoints.http_port
    with trio.fail_after(10):
        async with await connect(port) as stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            await stream.send_eof()
            answer = await until_eof(stream)
    assert not answer.startswith(b"HTTP/1.1 200"), answer
    no_errors(caplog)
