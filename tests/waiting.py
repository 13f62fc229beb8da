"""Waiting for what a test can observe, never for a fixed time: a bounded polling loop under
``trio.fail_after``, and a webhook receiver that hands each request to the test."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from marveld.web.server import serve_asgi

POLL_SECONDS = 0.01


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, seconds: float = 5.0, what: str = ""
) -> None:
    """Return once ``condition()`` is true; fail after ``seconds`` naming ``what``."""
    try:
        with trio.fail_after(seconds):
            while True:
                result = condition()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await trio.sleep(POLL_SECONDS)
    except trio.TooSlowError:
        raise AssertionError(f"not true within {seconds}s: {what or condition}") from None


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes


class Receiver:
    """An HTTP server on a free port that answers ``status`` to every POST and passes each
    request to the test through a memory channel."""

    def __init__(self, status: int = 202) -> None:
        self.status = status
        self._send, self._receive = trio.open_memory_channel[Received](100)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self, nursery: trio.Nursery) -> Receiver:
        async def hook(request: Request) -> Response:
            self._send.send_nowait(Received(dict(request.headers), await request.body()))
            return Response(status_code=self.status)

        app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
        self.port = await nursery.start(partial(serve_asgi, app, "127.0.0.1", 0, name="receiver"))
        return self

    async def next(self, seconds: float = 5.0) -> Received:
        with trio.fail_after(seconds):
            return await self._receive.receive()

    def pending(self) -> int:
        return self._receive.statistics().current_buffer_used
