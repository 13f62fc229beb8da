"""Marvel's error answers, with the exact bodies the real API sent.

Parameter errors read ``{"code": 409, "status": "..."}``; gateway errors (auth, quota) read
``{"code": "InvalidCredentials", "message": "..."}``. The recorded bodies are in
``shared/data/marvel/errors/``. Texts marked "not recorded" follow the recorded pattern.
"""

from __future__ import annotations

import json
from collections.abc import Mapping


class ApiError(Exception):
    """An answer other than 200: the HTTP status, the JSON body and extra headers."""

    def __init__(
        self, status: int, body: Mapping[str, int | str], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = dict(body)
        self.headers = dict(headers or {})

    def encoded(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


def conflict(text: str) -> ApiError:
    """A 409 for a parameter the API does not accept."""
    return ApiError(409, {"code": 409, "status": text})


def unknown_parameter(name: str) -> ApiError:
    return conflict(f"We don't recognize the parameter {name}")


def blank_parameter(name: str) -> ApiError:
    return conflict(f"{name} cannot be blank if it is set")


def invalid_ordering(value: str) -> ApiError:
    return conflict(f"{value} is not a valid ordering parameter.")


def invalid_limit() -> ApiError:
    return conflict("You must pass an integer limit greater than 0.")


def limit_over_max(maximum: int) -> ApiError:
    return conflict(f"You may not request more than {maximum} items.")


def invalid_offset() -> ApiError:
    """Not recorded."""
    return conflict("You must pass an integer offset greater than or equal to 0.")


def invalid_date(value: str) -> ApiError:
    """Not recorded."""
    return conflict(f"{value} is not a valid date.")


def too_many_filter_values(noun: str, maximum: int) -> ApiError:
    return conflict(f"You may not submit more than {maximum} {noun} ids.")


def invalid_filter_value(noun: str) -> ApiError:
    return conflict(f"You must pass at least one valid {noun} id if you set the {noun} filter.")


def bad_change(text: str) -> ApiError:
    """The simulator's own: a change to ``/_sim/characters`` it cannot make."""
    return ApiError(400, {"code": 400, "status": text})


def character_not_found() -> ApiError:
    return ApiError(404, {"code": 404, "status": "We couldn't find that character"})


def resource_not_found(path: str) -> ApiError:
    """Not recorded: what the gateway answered for a path it does not serve."""
    return ApiError(404, {"code": "ResourceNotFound", "message": f"{path} does not exist"})


def method_not_allowed(method: str) -> ApiError:
    """Not recorded."""
    return ApiError(
        405, {"code": 405, "status": f"{method} is not allowed"}, headers={"allow": "GET, HEAD"}
    )


def missing_parameter(what: str) -> ApiError:
    return ApiError(409, {"code": "MissingParameter", "message": f"You must provide a {what}."})


def invalid_credentials(text: str) -> ApiError:
    return ApiError(401, {"code": "InvalidCredentials", "message": text})


def throttled(retry_after: int) -> ApiError:
    return ApiError(
        429,
        {
            "code": "RequestThrottled",
            "message": "You have exceeded your rate limit.  Please try again later.",
        },
        headers={"retry-after": str(retry_after)},
    )


def internal_error() -> ApiError:
    return ApiError(500, {"code": 500, "status": "Internal Server Error"})


def service_unavailable(retry_after: int) -> ApiError:
    """Not recorded: a 503 from the gateway, with Retry-After."""
    return ApiError(
        503,
        {"code": "ServiceUnavailable", "message": "The service is temporarily unavailable."},
        headers={"retry-after": str(retry_after)},
    )


def gateway_timeout() -> ApiError:
    """Not recorded: the gateway gave up waiting for the API."""
    return ApiError(504, {"code": "GatewayTimeout", "message": "The API did not answer in time."})
