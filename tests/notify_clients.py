"""Real notification clients for tests: a grpclib Subscribe stream on the AioClient's
asyncio loop (messages handed to trio through a thread-safe queue), and trio-websocket."""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url
from wsproto.connection import ConnectionState

from marveld.proto.marvel import v1 as pb
from tests.aio import AioClient

STREAM_SECONDS = 60


async def _pong_while_open(self: WebSocketConnection, event: Any) -> None:
    """trio-websocket 0.12 answers a ping even after it sent its close frame: wsproto then
    raises LocalProtocolError in its reader task, and ``open_websocket`` lets a stray
    ``trio.Cancelled`` out of its block, which silently cancels the caller's nursery
    (python-trio/trio-websocket#184, fix proposed in #198, unreleased). marveld pings its
    WebSocket subscribers, so a client closing as a ping arrives hit it: answer pings only
    while the connection is open, as that fix does."""
    if self._wsproto.state is ConnectionState.OPEN:
        await _answer_ping(self, event)


_answer_ping = WebSocketConnection._handle_ping_event
WebSocketConnection._handle_ping_event = _pong_while_open  # type: ignore[method-assign]
SMALL_WINDOW = 65_535  # HTTP/2's smallest; grpclib's default is 4 MiB


class SmallWindowClient(AioClient):
    """A client whose connection takes 64 KiB unread before the server must wait."""

    @staticmethod
    def _open_channel(port: int) -> Channel:
        config = Configuration(
            http2_connection_window_size=SMALL_WINDOW, http2_stream_window_size=SMALL_WINDOW
        )
        return Channel("127.0.0.1", port, config=config)


@asynccontextmanager
async def small_window_client(port: int) -> AsyncIterator[AioClient]:
    client = await trio.to_thread.run_sync(SmallWindowClient, port)
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(client.close)


class GrpcStream:
    """One Subscribe call. ``read=False`` opens it and never reads: a slow consumer."""

    def __init__(
        self, client: AioClient, auth: dict[str, str], request: pb.SubscribeRequest, *, read: bool
    ) -> None:
        self._client = client
        self.items: queue.Queue[pb.Notification | BaseException | None] = queue.Queue()
        self.trailers: dict[str, str] = {}
        self.error: GRPCError | None = None
        self._reading = asyncio.Event()
        if read:
            client._loop.call_soon_threadsafe(self._reading.set)
        self._future = asyncio.run_coroutine_threadsafe(
            self._run(auth, request, read), client._loop
        )

    async def _run(self, auth: dict[str, str], request: pb.SubscribeRequest, read: bool) -> None:
        stream = self._client.channel.request(
            "/marvel.v1.NotificationService/Subscribe",
            Cardinality.UNARY_STREAM,
            pb.SubscribeRequest,
            pb.Notification,
            timeout=STREAM_SECONDS,
            metadata=auth,
        )
        ending: GRPCError | Exception | None = None
        try:
            async with stream:
                await stream.send_message(request, end=True)
                await self._reading.wait()
                while (message := await stream.recv_message()) is not None:
                    self.items.put(message)
                await stream.recv_trailing_metadata()
        except GRPCError as exc:
            self.error = ending = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ending = exc
        finally:
            self.trailers = {k: str(v) for k, v in (stream.trailing_metadata or {}).items()}
        # Last, once the trailers are kept: a reader that sees the end may look at them.
        self.items.put(ending)

    async def next(self, *, seconds: float = 5.0, heartbeats: bool = False) -> Any:
        """The next notification (heartbeats skipped unless asked for), or the error or
        None that ended the stream."""
        with trio.fail_after(seconds):
            while True:
                item = await trio.to_thread.run_sync(self._get)
                if item is _EMPTY:
                    await trio.sleep(0.01)
                    continue
                if isinstance(item, pb.Notification) and item.heartbeat and not heartbeats:
                    continue
                return item

    def _get(self) -> Any:
        try:
            return self.items.get(timeout=0.2)
        except queue.Empty:
            return _EMPTY

    async def ended(self, *, seconds: float = 5.0) -> Any:
        """What ended the stream (an error or None), skipping what came before."""
        with trio.fail_after(seconds):
            while True:
                item = await self.next(seconds=seconds)
                if not isinstance(item, pb.Notification):
                    return item

    def resume(self) -> None:
        """Start reading (a stream opened with ``read=False``)."""
        self._client._loop.call_soon_threadsafe(self._reading.set)

    def cancel(self) -> None:
        self._client._loop.call_soon_threadsafe(self._future.cancel)


_EMPTY = object()


@asynccontextmanager
async def grpc_stream(
    client: AioClient, auth: dict[str, str], *, read: bool = True, **fields: Any
) -> AsyncIterator[GrpcStream]:
    stream = GrpcStream(client, auth, pb.SubscribeRequest(**fields), read=read)
    try:
        yield stream
    finally:
        stream.cancel()


@asynccontextmanager
async def websocket(
    http_port: int, query: str = "", **headers: str
) -> AsyncIterator[WebSocketConnection]:
    url = f"ws://127.0.0.1:{http_port}/v1/notifications/ws{query}"
    extra = [(k.encode(), v.encode()) for k, v in headers.items()]
    async with open_websocket_url(url, extra_headers=extra) as ws:
        try:
            yield ws
        finally:
            if ws.closed is not None:
                # trio-websocket 0.12 never closes the TCP stream of a connection whose
                # server vanished (no close frame, kill -9): close it here, not in the GC.
                await ws._stream.aclose()


async def ws_next(
    ws: WebSocketConnection, *, seconds: float = 5.0, heartbeats: bool = False
) -> Any:
    with trio.fail_after(seconds):
        while True:
            message = json.loads(await ws.get_message())
            if message["heartbeat"] and not heartbeats:
                continue
            return message


async def ws_closed(ws: WebSocketConnection, *, seconds: float = 5.0) -> Any:
    with trio.fail_after(seconds):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason
