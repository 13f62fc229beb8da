"""The ASGI app of the HTTP port: ``/metrics``, ``/healthz``, ``/readyz`` and the routes
the composition root adds (the webhook receiver, ``web/webhooks.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

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
    informational: Collection[str] = (),
) -> Starlette:
    """``ready`` answers each readiness condition by name; all true means ready, except
    the ``informational`` ones, which are reported but do not gate readiness. ``routes``
    are more endpoints (the webhook receiver); ``gateway`` the JSON gateway's routes
    (web/gateway.py)."""

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

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *routes,
            *gateway,
        ],
        # Correlation ids and one log line per request, the size limits' 413 and 431 too.
        middleware=[Middleware(AccessLog), Middleware(RequestLimits)],
        exception_handlers={HTTPException: http_exception},  # 404, 405: problem+json
    )
