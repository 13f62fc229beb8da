"""The ASGI app of the HTTP port: ``/metrics``, ``/healthz`` and ``/readyz``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from marveld.metrics import Metrics
from marveld.web.access_log import AccessLog
from marveld.web.problems import http_exception

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


def build_app(
    metrics: Metrics, ready: ReadyCheck, *, gateway: Sequence[BaseRoute] = ()
) -> Starlette:
    """``ready`` answers each readiness condition by name; all true means ready.
    ``gateway`` holds the JSON gateway's routes (web/gateway.py)."""

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = await ready()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    return Starlette(
        routes=[
            Route("/metrics", metrics_endpoint),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            *gateway,
        ],
        middleware=[Middleware(AccessLog)],  # correlation ids and one log line per request
        exception_handlers={HTTPException: http_exception},  # 404, 405: problem+json
    )
