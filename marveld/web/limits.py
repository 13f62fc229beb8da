"""Request size limits on the HTTP port.

hypercorn's own limits are partial: ``h11_max_incomplete_size`` bounds only a header block
that arrives in pieces (one sent whole in a single read passes), and nothing bounds bodies.
:class:`RequestLimits` answers 431 for a header block over the limit and 413 for a body over
it: at once when ``Content-Length`` announces it, else as soon as the streamed (chunked)
body passes it, before the app has buffered more. Both are problem+json like every other
answer; the daemon's app runs this inside its access log (web/app.py), so they carry the
``x-correlation-id`` and leave an access line too.

Any answer that starts before the request's body was read to its end (these two, and the
app's own: a 404, a 415, a webhook's 413 after 64 KiB) says ``Connection: close``, and the
server closes once it is sent. Else the unread rest of the body would be read as the next
request on a keep-alive connection, and a client that pooled the connection would send its
next request into one the server is about to drop.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marveld.web.problems import Problem, problem_response

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
                detail = f"request headers over {self._max_headers} bytes"
                await _refuse(scope, receive, send, 431, detail, "headers")
            else:
                await send({"type": "websocket.close", "code": 1009})
            return
        if scope["type"] == "websocket":  # hypercorn bounds its messages (server.py)
            await self._app(scope, receive, send)
            return
        named = dict(headers)
        announced = named.get(b"content-length")
        if announced is not None and (not announced.isdigit() or int(announced) > self._max_body):
            detail = f"request body over {self._max_body} bytes"
            await _refuse(scope, receive, send, 413, detail, "body")
            return
        has_body = b"transfer-encoding" in named or announced not in (None, b"0")
        body = _CountedBody(scope, receive, send, self._max_body, has_body=has_body)
        try:
            await self._app(scope, body.receive, body.send)
        except Exception:
            if not body.refused:
                raise
            # The app met the disconnect that stopped its body (Starlette raises
            # ClientDisconnect); the client has its 413 already.


class _CountedBody:
    """A receive that stops a body at the limit (413, then a disconnect for the app), and a
    send that drops whatever the app answers after that, and closes the connection after
    an answer that starts before the body was read to its end."""

    def __init__(
        self, scope: Scope, receive: Receive, send: Send, limit: int, *, has_body: bool
    ) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        self._limit = limit
        self._received = 0
        self._read_all = not has_body
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
                    detail = f"request body over {self._limit} bytes"
                    await _refuse(self._scope, self._receive, self._send, 413, detail, "body")
                return {"type": "http.disconnect"}
            self._read_all = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self._started = True
            if not self._read_all:
                message = {**message, "headers": _closing(message.get("headers", ()))}
        await self._send(message)


def _closing(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``Connection: close`` in place of any other Connection header."""
    kept = [(name, value) for name, value in headers if name.lower() != b"connection"]
    return [*kept, (b"connection", b"close")]


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: int, detail: str, field: str
) -> None:
    """A problem+json answer, sent before the body was read: the connection closes."""
    problem = Problem(status, detail, field=field, headers={"Connection": "close"})
    await problem_response(problem)(scope, receive, send)
