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
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise DeliveryFailed(f"webhook URL {url!r} is not a URL") from exc
        headers = {
            **self._http.headers,
            "Host": target.netloc.decode("ascii"),
            "Content-Length": str(len(body)),
            SIGNATURE_HEADER: signature_header(secret, timestamp, body),
        }
        # The body is a plain iterator, not httpx's async generator, and the answer's body
        # is never read: a send cancelled half-way (a simulator shutting down) leaves no
        # async generator behind for the garbage collector (encode/httpx#3686).
        request = httpx.Request("POST", target, headers=headers, stream=_OneChunk(body))
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise DeliveryFailed(f"webhook to {url} timed out") from exc
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"webhook to {url} failed: {type(exc).__name__}") from exc
        await response.aclose()
        log.debug("webhook to %s: HTTP %d", url, response.status_code)
        return response.status_code


class _OneChunk(httpx.AsyncByteStream):
    """A request body sent as one chunk, iterated by a class rather than a generator."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Chunks([self._body])


class _Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)
