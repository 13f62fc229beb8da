"""The ASGI app of the HTTP port: ``/metrics``, ``/healthz``, ``/readyz`` and the routes
the composition root adds (the webhook receiver, ``web/webhooks.py``; the JSON gateway;
the notifications WebSocket).

Every request passes the access log (a correlation id, one line) and the size limits
first. WebSocket paths then go straight to their ASGI app, not through Starlette's
router: its error, exception and routing layers are a dozen coroutine frames and closures
that a WebSocket keeps for its whole life (6 KiB of an idle subscriber's 33, measured
with tracemalloc; bench/notifications.py prints the figure).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from marveld.metrics import Metrics
from marveld.web.access_log import AccessLog
from marveld.web.limits import RequestLimits
from marveld.web.problems import http_exception

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


def build_app(
    metrics: Metrics,
    ready: ReadyCheck,
    *,
    routes: Sequence[BaseRoute] = (),
    gateway: Sequence[BaseRoute] = (),
    websockets: Mapping[str, ASGIApp] = {},
    informational: Collection[str] = (),
) -> ASGIApp:
    """``ready`` answers each readiness condition by name; all true means ready, except
    the ``informational`` ones, which are reported but do not gate readiness. ``routes``
    are more endpoints (the webhook receiver); ``gateway`` the JSON gateway's routes
    (web/gateway.py); ``websockets`` ASGI apps by path (web/notifications.py)."""

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = await ready()
        ok = all(passed for name, passed in checks.items() if name not in informational)
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    http = Starlette(
        routes=[
            Route("/metrics", metrics_endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *routes,
            *gateway,
        ],
        exception_handlers={HTTPException: http_exception},  # 404, 405: problem+json
    )
    # Correlation ids and one log line per request, the size limits' 413 and 431 too.
    return AccessLog(RequestLimits(_WebSockets(websockets, http)))


class _WebSockets:
    """WebSockets on a path of ``apps`` to that app; everything else to ``other``."""

    def __init__(self, apps: Mapping[str, ASGIApp], other: ASGIApp) -> None:
        self._apps = dict(apps)
        self._other = other

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._apps.get(scope["path"]) if scope["type"] == "websocket" else None
        await (app or self._other)(scope, receive, send)
