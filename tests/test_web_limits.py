"""Limits of the HTTP port, on real servers: bodies over 1 MiB get 413 whether their
length is announced or streamed, header blocks over 16 KiB get 431, and idle keep-alive
connections stay open longer than clients keep them in their pools."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from marveld.web.limits import MAX_BODY_BYTES, MAX_HEADER_BYTES, RequestLimits
from marveld.web.server import ConnectionLimits, serve_asgi
from tests.conftest import Running

CHUNK = 64 * 1024


async def echo_length(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


async def serve_echo(nursery: trio.Nursery, **options: Any) -> int:
    """/echo on a free port; ``options`` are more serve_asgi arguments."""
    app = Starlette(routes=[Route("/echo", echo_length, methods=["POST"])])
    port: int = await nursery.start(partial(serve_asgi, app, "127.0.0.1", 0, **options))
    return port


class Chunks:
    """``total`` bytes as an async iterator (a class, not a generator: httpx may stop early)."""

    def __init__(self, total: int) -> None:
        self._left = total

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._left <= 0:
            raise StopAsyncIteration
        size = min(CHUNK, self._left)
        self._left -= size
        return b"x" * size


async def raw_request(port: int, head: bytes) -> bytes:
    """Send a request head as it is (plus ``Connection: close``); the answer's status line."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(head + b"Connection: close\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some(65536):  # to the end: the server closes
                answer += chunk
            return answer.split(b"\r\n", 1)[0]


async def test_bodies_up_to_the_limit_pass(nursery: trio.Nursery) -> None:
    port = await serve_echo(nursery)
    async with httpx.AsyncClient(timeout=10) as http:
        whole = await http.post(f"http://127.0.0.1:{port}/echo", content=b"x" * MAX_BODY_BYTES)
        streamed = await http.post(f"http://127.0.0.1:{port}/echo", content=Chunks(100_000))
    assert (whole.status_code, whole.text) == (200, str(MAX_BODY_BYTES))
    assert (streamed.status_code, streamed.text) == (200, "100000")


async def test_a_streamed_body_over_the_limit_is_413(nursery: trio.Nursery) -> None:
    port = await serve_echo(nursery)
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"http://127.0.0.1:{port}/echo", content=Chunks(MAX_BODY_BYTES + CHUNK)
        )
    assert "content-length" not in answer.request.headers  # chunked: no length announced
    assert answer.status_code == 413
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["connection"] == "close"  # the rest of the body is never read
    assert answer.json()["detail"] == f"request body over {MAX_BODY_BYTES} bytes"
    assert answer.json()["field"] == "body"


async def test_an_announced_body_over_the_limit_is_413_before_it_is_sent(
    nursery: trio.Nursery, marveld: Running
) -> None:
    for port in (await serve_echo(nursery), marveld.endpoints.http_port):
        for length in (str(MAX_BODY_BYTES + 1).encode(), b"99999999999999999999", b"-1", b"1e3"):
            status = await raw_request(
                port,
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n",
            )
            assert status in (b"HTTP/1.1 413 ", b"HTTP/1.1 400 "), (port, length, status)


async def test_header_blocks_over_the_limit_are_431(marveld: Running) -> None:
    port = marveld.endpoints.http_port

    def healthz(extra: bytes) -> bytes:
        return b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + extra

    assert await raw_request(port, healthz(b"")) == b"HTTP/1.1 200 "
    assert await raw_request(port, healthz(b"X-Fine: " + b"a" * 8000 + b"\r\n")) == (
        b"HTTP/1.1 200 "
    )
    many = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20))
    assert await raw_request(port, healthz(many)) == b"HTTP/1.1 431 "
    one = b"X-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n"
    assert await raw_request(port, healthz(one)) == b"HTTP/1.1 431 "


# The other kinds of ASGI calls, driven directly: no server needed to see what passes.


class Recorder:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.calls = 0

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        if scope["type"] == "http":
            raise RuntimeError("a bug in the app")

    async def send(self, message: Message) -> None:
        self.sent.append(message)


async def nothing() -> Message:
    raise AssertionError("not called")


async def test_websockets_and_lifespan_pass_and_app_errors_propagate() -> None:
    recorder = Recorder()
    limits = RequestLimits(recorder.app)
    await limits({"type": "lifespan"}, nothing, recorder.send)
    await limits({"type": "websocket", "headers": [(b"a", b"b")]}, nothing, recorder.send)
    assert recorder.calls == 2
    big = [(b"x-big", b"a" * MAX_HEADER_BYTES)]
    await limits({"type": "websocket", "headers": big}, nothing, recorder.send)
    assert recorder.calls == 2
    assert recorder.sent == [{"type": "websocket.close", "code": 1009}]
    with pytest.raises(RuntimeError, match="a bug in the app"):  # not a refusal: not hidden
        await limits({"type": "http", "headers": []}, nothing, recorder.send)


def test_idle_connections_outlast_httpx_pools() -> None:
    # Were they equal (hypercorn's and httpx's defaults are both 5 s), a client could reuse
    # a connection in the instant the server closes it, and lose a POST to a ReadError.
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None
    assert client_expiry < ConnectionLimits().idle_timeout


async def test_an_idle_keep_alive_connection_closes_after_its_timeout(
    nursery: trio.Nursery,
) -> None:
    port = await serve_echo(nursery, limits=ConnectionLimits(idle_timeout=1.0))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        await stream.send_all(request)
        assert (await echo_answer(stream)).startswith(b"HTTP/1.1 200")
        with trio.move_on_after(0.5):  # idle, but within its timeout: still open
            assert await stream.receive_some(65536) == b"never"
        await stream.send_all(request)  # and reusable
        assert (await echo_answer(stream)).startswith(b"HTTP/1.1 200")
        with trio.fail_after(10):
            assert await stream.receive_some(65536) == b""  # closed once idle for 1 s


async def echo_answer(stream: trio.SocketStream) -> bytes:
    """One whole answer of /echo to an empty body (its body is ``0``)."""
    answer = b""
    with trio.fail_after(10):
        while not answer.endswith(b"\r\n\r\n0"):
            answer += await stream.receive_some(65536)
    return answer
