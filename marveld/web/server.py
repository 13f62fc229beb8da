"""Serve an ASGI app with hypercorn's trio worker; readiness reports the real bound port.

This is the one place that knows hypercorn.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from marveld.listen import listen_tcp
from marveld.web.limits import MAX_HEADER_BYTES, RequestLimits

log = logging.getLogger(__name__)

GRACEFUL_SECONDS = 5.0
# How long an idle keep-alive connection stays open. Longer than clients keep idle
# connections in their pools (httpx 5 s, aiohttp 15 s): hypercorn's default, 5 s, equals
# httpx's, so a client reusing a connection idle ~5 s raced the server's close and lost a
# POST to a ReadError (seen in CI; reproduced 1 in 30 at 4.994 s idle). Not much longer:
# hypercorn's trio worker holds the socket of a client that closed an idle connection
# (CLOSE-WAIT) until this timeout, so it bounds what short-lived clients cost in fds.
KEEP_ALIVE_SECONDS = 20.0
MAX_WEBSOCKET_MESSAGE_BYTES = 1 << 20


async def serve_asgi(
    app: Any,
    host: str,
    port: int,
    *,
    name: str = "http",
    websocket_ping_interval: float | None = None,
    keep_alive_seconds: float = KEEP_ALIVE_SECONDS,
    setting: str = "http.listen",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` (port 0 picks a free one) until cancelled.

    ``task_status.started`` gets the bound port once the socket listens. Request headers,
    bodies (:class:`RequestLimits`) and WebSocket messages have size limits.
    """
    config = Config()
    # Bound here, not by hypercorn: a taken port is then CannotListen naming ``setting``
    # (and hypercorn would leave its socket unclosed). hypercorn owns it from here on.
    config.bind = [f"fd://{listen_tcp(host, port, setting).detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger(f"marveld.{name}")
    config.graceful_timeout = GRACEFUL_SECONDS
    config.keep_alive_timeout = keep_alive_seconds
    # Room for the request line and framing around the headers RequestLimits counts.
    config.h11_max_incomplete_size = 2 * MAX_HEADER_BYTES
    config.h2_max_header_list_size = 2 * MAX_HEADER_BYTES
    config.websocket_max_message_size = MAX_WEBSOCKET_MESSAGE_BYTES
    # Pings keep idle WebSockets alive through proxies and find dead peers.
    config.websocket_ping_interval = websocket_ping_interval
    async with trio.open_nursery() as nursery:
        limited: Any = RequestLimits(app)  # starlette's ASGI types, not hypercorn's: both fit
        binds: list[str] = await nursery.start(partial(serve, limited, config))
        bound = int(binds[0].rsplit(":", 1)[1])
        log.info("%s listening on %s:%d", name, host, bound)
        task_status.started(bound)
