"""Request size limits on the HTTP port.

hypercorn's own limits are partial: ``h11_max_incomplete_size`` bounds only a header block
that arrives in pieces (one sent whole in a single read passes), and nothing bounds bodies.
:class:`RequestLimits` answers 431 for a header block over the limit and 413 for a body over
it: at once when ``Content-Length`` announces it, else as soon as the streamed (chunked)
body passes it, before the app has buffered more.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1 << 20  # webhooks and JSON requests are a few KB
MAX_HEADER_BYTES = 16 * 1024  # every name and value of a request's headers together


class RequestLimits:
    """ASGI middleware: 431 for header blocks, 413 for bodies over the limits."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int = MAX_BODY_BYTES,
        max_headers: int = MAX_HEADER_BYTES,
    ) -> None:
        self._app = app
        self._max_body = max_body
        self._max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if sum(len(name) + len(value) for name, value in headers) > self._max_headers:
            if scope["type"] == "http":
                await _refuse(send, 431, f"request headers over {self._max_headers} bytes")
            else:
                await send({"type": "websocket.close", "code": 1009})
            return
        if scope["type"] == "websocket":  # hypercorn bounds its messages (server.py)
            await self._app(scope, receive, send)
            return
        announced = dict(headers).get(b"content-length")
        if announced is not None and (not announced.isdigit() or int(announced) > self._max_body):
            await _refuse(send, 413, f"request body over {self._max_body} bytes")
            return
        body = _CountedBody(receive, send, self._max_body)
        try:
            await self._app(scope, body.receive, body.send)
        except Exception:
            if not body.refused:
                raise
            # The app met the disconnect that stopped its body (Starlette raises
            # ClientDisconnect); the client has its 413 already.


class _CountedBody:
    """A receive that stops a body at the limit (413, then a disconnect for the app), and a
    send that drops whatever the app answers after that."""

    def __init__(self, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._received = 0
        self._started = False
        self.refused = False

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                self.refused = True
                if not self._started:
                    await _refuse(self._send, 413, f"request body over {self._limit} bytes")
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        self._started = self._started or message["type"] == "http.response.start"
        await self._send(message)


async def _refuse(send: Send, status: int, text: str) -> None:
    body = f"{text}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
