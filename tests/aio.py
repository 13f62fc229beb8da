"""Real gRPC clients for trio tests.

grpclib is asyncio-only and the daemon under test owns the trio-asyncio loop, so the test's
client runs on a plain asyncio loop in a thread of its own; each call is awaited from trio
through a worker thread. Every call has a timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
from grpclib.client import Channel

T = TypeVar("T")

CALL_TIMEOUT = 10.0


class AioClient:
    """An asyncio loop in a thread with one grpclib Channel to ``127.0.0.1:port``."""

    def __init__(self, port: int) -> None:
        # A plain selector loop: trio-asyncio installs its own policy for new_event_loop().
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.channel: Channel = self.run_sync(self._open_channel, port)

    def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        async def call() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(CALL_TIMEOUT)

    @staticmethod
    def _open_channel(port: int) -> Channel:
        return Channel("127.0.0.1", port)

    async def call(self, fn: Callable[[Channel], Awaitable[T]]) -> T:
        """``await fn(channel)`` on the client loop, from trio."""

        async def bounded() -> T:
            return await asyncio.wait_for(fn(self.channel), CALL_TIMEOUT)

        future = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        return await trio.to_thread.run_sync(future.result, CALL_TIMEOUT + 1)

    def call_blocking(self, fn: Callable[[Channel], Awaitable[T]]) -> T:
        """``await fn(channel)`` on the client loop, from a plain thread (not trio's)."""

        async def bounded() -> T:
            return await asyncio.wait_for(fn(self.channel), CALL_TIMEOUT)

        return asyncio.run_coroutine_threadsafe(bounded(), self._loop).result(CALL_TIMEOUT + 1)

    def close(self) -> None:
        self.run_sync(self.channel.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT)
        # Let the transports run the close callbacks they scheduled, then close the loop.
        self._loop.run_until_complete(asyncio.sleep(0.01))
        self._loop.close()


@asynccontextmanager
async def grpc_client(port: int) -> AsyncIterator[AioClient]:
    client = await trio.to_thread.run_sync(AioClient, port)
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True):  # closed even when the test cancels its daemon
            await trio.to_thread.run_sync(client.close)
