"""Sending signed change webhooks (what the simulator does for the Marvel side).

The simulator needs an HTTP client and httpx lives in ``upstream/`` only, so the sending
half of the webhook protocol sits here, next to the client that speaks to Marvel; the
signature itself is ``domain.webhooks``. httpx's errors stop here: callers see
:class:`DeliveryFailed`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import httpx

from marveld.domain.errors import MarveldError
from marveld.domain.webhooks import SIGNATURE_HEADER, signature_header
from marveld.upstream.client import USER_AGENT

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 5.0


class DeliveryFailed(MarveldError):
    """The receiver could not be reached or timed out. ``str(exc)`` holds no secret."""


class WebhookSender:
    """POSTs signed JSON bodies. Build it with :meth:`open`; it pools connections."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - per request, not a deadline
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> AsyncIterator[WebhookSender]:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        ) as http:
            yield cls(http)

    async def send(self, url: str, body: bytes, *, secret: str, timestamp: int) -> int:
        """POST ``body`` to ``url`` signed for ``timestamp``; the answer's HTTP status.
        DeliveryFailed when no answer came."""
        headers = {SIGNATURE_HEADER: signature_header(secret, timestamp, body)}
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryFailed(f"webhook to {url} timed out") from exc
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"webhook to {url} failed: {type(exc).__name__}") from exc
        log.debug("webhook to %s: HTTP %d", url, response.status_code)
        return response.status_code
