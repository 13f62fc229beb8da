"""ASGI middleware of the HTTP port: a correlation id and one log line per request.

A pure ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: the app runs in the
same task, so the context variable it sets is the one the endpoint's log lines see.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marveld import correlation

log = logging.getLogger(__name__)

# Paths whose request line is logged at DEBUG: probes and scrapes, every few seconds.
QUIET_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = dict(scope.get("headers") or ())
        correlation_id = correlation.choose(
            _text(headers.get(name.encode())) for name in correlation.REQUEST_HEADERS
        )
        token = correlation.CORRELATION_ID.set(correlation_id)
        # What the client gets if the app fails before it answers; a WebSocket closed
        # before it was accepted is refused with 403 (the ASGI spec).
        status: Any = 500 if scope["type"] == "http" else 403
        started = time.perf_counter()
        logged = False

        def log_once() -> None:
            nonlocal logged
            if not logged:
                logged = True
                path = scope.get("path", "")
                correlation.log_request(
                    log,
                    "http",
                    f"{scope.get('method', 'WEBSOCKET')} {path}",
                    status,
                    time.perf_counter() - started,
                    quiet=path in QUIET_PATHS,
                )

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] in (
                "http.response.start",
                "websocket.accept",
                "websocket.http.response.start",
            ):
                status = message.get("status", 101)
                extra = (correlation.RESPONSE_HEADER.encode(), correlation_id.encode())
                message = {**message, "headers": [*message.get("headers", ()), extra]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                log_once()  # before the last byte leaves: a client never sees it before the log
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            log_once()
            correlation.CORRELATION_ID.reset(token)


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None
