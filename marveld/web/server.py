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

log = logging.getLogger(__name__)

GRACEFUL_SECONDS = 5.0


async def serve_asgi(
    app: Any,
    host: str,
    port: int,
    *,
    name: str = "http",
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` (port 0 picks a free one) until cancelled.

    ``task_status.started`` gets the bound port once the socket listens.
    """
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger(f"marveld.{name}")
    config.graceful_timeout = GRACEFUL_SECONDS
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, app, config))
        bound = int(binds[0].rsplit(":", 1)[1])
        log.info("%s listening on %s:%d", name, host, bound)
        task_status.started(bound)
