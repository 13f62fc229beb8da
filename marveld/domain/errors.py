"""The errors the services raise. The faces (gRPC, HTTP) translate each to a status in one place."""

from __future__ import annotations


class MarveldError(Exception):
    """Base of every error marveld raises on purpose."""


class InvalidArgument(MarveldError):
    """A client sent a bad value. ``field`` names the request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(MarveldError):
    """The thing asked for does not exist."""


class AlreadyExists(MarveldError):
    """A unique value (an email) is taken."""


class Unauthenticated(MarveldError):
    """No credentials, or credentials that do not check out."""


class PermissionDenied(MarveldError):
    """Authenticated, but not allowed."""


class ResourceExhausted(MarveldError):
    """Too many requests (a rate limit, or too many failed logins). ``retry_after`` is how
    many seconds until a retry can succeed."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamError(MarveldError):
    """The Marvel API (or the simulator) did not give a usable answer."""


class UpstreamUnavailable(UpstreamError):
    """The upstream is down, timed out, failed or throttled us, after retries."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamRejected(UpstreamError):
    """The upstream refused the request itself (a 4xx other than 404/429).

    ``status`` is the HTTP status, ``code`` Marvel's code (an int or a string such as
    ``"InvalidCredentials"``), and the message is Marvel's text.
    """

    def __init__(self, message: str, *, status: int, code: int | str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def is_credentials_problem(self) -> bool:
        """True when the upstream refused marveld's keys (our configuration, not the client)."""
        return self.status == 401 or self.code in {"InvalidCredentials", "MissingParameter"}


class ShuttingDown(MarveldError):
    """The daemon is stopping: a call that arrived too late to be served (retry it)."""

    def __init__(self) -> None:
        super().__init__("marveld is shutting down; retry shortly")


class DatabaseUnavailable(MarveldError):
    """The database cannot be reached (a PostgreSQL server down or failing over): not the
    client's fault, and worth a retry shortly."""

    retry_after = 5.0


class CursorExpired(MarveldError):
    """A notification cursor older than retention: what followed it may be gone (re-list)."""

    def __init__(self, cursor: int, oldest: int) -> None:
        super().__init__(
            f"cursor {cursor} is older than retention; the oldest resumable cursor is {oldest}"
        )
        self.cursor = cursor
        self.oldest = oldest


class CannotStart(MarveldError):
    """The daemon cannot start for a reason its operator can fix; the message says what
    and which setting. ``marveld serve`` prints it as one line and exits with status 1."""


class CannotListen(CannotStart):
    """A listening address is taken, not allowed or unknown."""

    def __init__(self, setting: str, host: str, port: int, reason: OSError) -> None:
        super().__init__(f"cannot listen on {host}:{port} ({setting}): {reason.strerror or reason}")
