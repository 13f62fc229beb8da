"""Errors on the HTTP port as ``application/problem+json`` (RFC 9457).

Domain errors become HTTP problems here, in one place (:func:`problem_for`), as
``grpc/bridge.status_for`` turns them into gRPC statuses; the two agree status for status.
A problem is ``{"type": "about:blank", "title": <the status's reason phrase>, "status",
"detail"}`` plus ``field`` (the request field or parameter at fault) for invalid
arguments and the request's ``correlation_id``. Never a 500 for a client's mistake.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from marveld.correlation import CORRELATION_ID
from marveld.domain import errors

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
# Retry-After of a 503 when nothing better is known (the breaker and the budget say when).
UNAVAILABLE_RETRY_SECONDS = 10
BEARER_CHALLENGE = 'Bearer realm="marveld"'


class Problem(Exception):
    """An HTTP error answer; the gateway raises it or returns :func:`problem_response`."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail
        self.field = field
        self.headers = dict(headers or {})


def problem_for(exc: errors.MarveldError) -> Problem:
    """The one translation from domain errors to HTTP problems."""
    match exc:
        case errors.InvalidArgument():
            return Problem(400, str(exc), field=exc.field)
        case errors.NotFound():
            return Problem(404, str(exc))
        case errors.AlreadyExists():
            return Problem(409, str(exc))
        case errors.Unauthenticated():
            return Problem(401, str(exc), headers={"WWW-Authenticate": BEARER_CHALLENGE})
        case errors.PermissionDenied():
            return Problem(403, str(exc))
        case errors.UpstreamRejected() if exc.is_credentials_problem:
            log.error("the Marvel API refused marveld's keys: %s", exc)
            return _unavailable("the Marvel API refused marveld's credentials", None)
        case errors.UpstreamRejected():
            return Problem(400, f"the Marvel API refused the query: {exc}")
        case errors.ShuttingDown():
            return _unavailable(str(exc), None)
        case errors.DatabaseUnavailable():
            return _unavailable("the database is unavailable; retry shortly", exc.retry_after)
        case errors.UpstreamError():
            retry_after = getattr(exc, "retry_after", None)
            return _unavailable(f"the Marvel API is unavailable: {exc}", retry_after)
        case _ if isinstance(retry_after := getattr(exc, "retry_after", None), int | float):
            # Any other error that says when to come back is a limit the client ran into.
            return Problem(429, str(exc), headers={"Retry-After": _seconds(retry_after)})
        case _:
            log.error("unmapped error %r", exc)
            return Problem(500, "internal error")


def _unavailable(detail: str, retry_after: float | None) -> Problem:
    seconds = UNAVAILABLE_RETRY_SECONDS if retry_after is None else retry_after
    return Problem(503, detail, headers={"Retry-After": _seconds(seconds)})


def _seconds(value: float) -> str:
    """Retry-After takes whole seconds; round up, and never say 0."""
    return str(max(1, math.ceil(value)))


def problem_response(problem: Problem) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(problem.status).phrase,
        "status": problem.status,
        "detail": problem.detail,
    }
    if problem.field is not None:
        body["field"] = problem.field
    if (correlation_id := CORRELATION_ID.get()) is not None:
        body["correlation_id"] = correlation_id
    return JSONResponse(
        body, status_code=problem.status, headers=dict(problem.headers), media_type=MEDIA_TYPE
    )


def domain_error(exc: BaseException) -> errors.MarveldError | None:
    """The MarveldError in ``exc``, looking inside exception groups."""
    if isinstance(exc, errors.MarveldError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := domain_error(inner)) is not None:
                return found
    return None


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such path, a method not allowed) as problems too."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    detail = {404: f"no such path: {request.url.path}", 405: "method not allowed"}.get(
        exc.status_code, str(exc.detail)
    )
    if exc.status_code == 405 and "Allow" in headers:
        detail = f"{request.method} is not allowed here; use {headers['Allow']}"
    return problem_response(Problem(exc.status_code, detail, headers=headers))
