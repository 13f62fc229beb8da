"""Correlation ids: one per request, on every log line the request causes, and sent back.

Each gRPC call and HTTP request gets an id: the client's ``x-correlation-id`` (or
``x-request-id``) when it sent a sane one, else a new uuid4 hex. The faces put it in
:data:`CORRELATION_ID` for the time of the request; :class:`CorrelationFilter` copies it
onto every log record, so a line logged deep in the services carries it too, and the face
returns it to the client as ``x-correlation-id``. Each request ends with one line from
:func:`log_request`: the face, the method, the status and the duration, never a header
value, a token or a password.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from contextvars import ContextVar

CORRELATION_ID: ContextVar[str | None] = ContextVar("marveld_correlation_id", default=None)
"""The current request's id; None outside a request."""

RESPONSE_HEADER = "x-correlation-id"
REQUEST_HEADERS = ("x-correlation-id", "x-request-id")
"""Where a client may send its own id, in this order of preference."""

# A client's id is taken as it is when it is short printable ASCII without spaces, quotes
# or separators that could forge a log line or a header.
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")


def choose(candidates: Iterable[str | None]) -> str:
    """The first sane id a client sent, else a new one."""
    for value in candidates:
        if value is not None and _SANE.fullmatch(value):
            return value
    return uuid.uuid4().hex


def log_request(
    logger: logging.Logger,
    face: str,
    method: str,
    status: str | int,
    seconds: float,
    *,
    quiet: bool = False,
) -> None:
    """The one line a request leaves; at DEBUG for probes and scrapes (``quiet``), which
    would otherwise fill the log with a line every few seconds."""
    duration_ms = round(seconds * 1000, 3)
    logger.log(
        logging.DEBUG if quiet else logging.INFO,
        "%s %s %s %.1f ms",
        face,
        method,
        status,
        duration_ms,
        extra={
            "fields": {"face": face, "method": method, "status": status, "duration_ms": duration_ms}
        },
    )


class CorrelationFilter(logging.Filter):
    """Puts the current request's id on each record as ``correlation_id`` (None outside a
    request), and ``replica`` (this replica's name) when given. Attach it to a handler;
    the formatters below show them."""

    def __init__(self, replica: str | None = None) -> None:
        super().__init__()
        self._replica = replica

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "correlation_id", None) is None:
            record.correlation_id = CORRELATION_ID.get()
        if self._replica is not None:
            record.replica = self._replica
        return True


class TextFormatter(logging.Formatter):
    """Readable lines; a request's lines end in ``[<correlation id>]``."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        correlation_id = getattr(record, "correlation_id", None)
        return f"{line} [{correlation_id}]" if correlation_id else line
