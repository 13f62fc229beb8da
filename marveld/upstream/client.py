"""The Marvel API client: one pooled httpx client, signed requests, retries, errors translated.

httpx stops here: callers see domain objects and ``marveld.domain.errors`` only.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import httpx
import trio

from marveld.domain.characters import Character, CharacterPage
from marveld.domain.errors import NotFound, UpstreamError, UpstreamRejected
from marveld.upstream.auth import MarvelAuth
from marveld.upstream.retry import Retryable, RetryPolicy, call_with_retries, parse_retry_after

log = logging.getLogger(__name__)

T = TypeVar("T")

OnRequest = Callable[[str, float], None]
"""Called once per HTTP attempt with one of :data:`OUTCOMES` and the attempt's seconds."""

BeforeAttempt = Callable[[str], Awaitable[None]]
"""Called before each HTTP attempt with the call's purpose ("request" or "poller"); it may
raise (a spent call budget, an open breaker) to stop the attempt and the call."""

OUTCOMES: Final = (
    "ok",
    "not_modified",
    "not_found",
    "client_error",
    "throttled",
    "server_error",
    "timeout",
    "connection_error",
    "malformed",
)
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_RETRY: Final = RetryPolicy()
USER_AGENT: Final = "marveld/0.1"
MAX_ERROR_TEXT: Final = 300


@dataclass(frozen=True, slots=True)
class _Result(Generic[T]):
    """What one attempt came to: an outcome label, and a value or an error to raise."""

    outcome: str
    value: T | None = None
    error: Exception | None = None
    cause: BaseException | None = None


class MarvelClient:
    """``GET /characters`` and ``GET /characters/{id}`` against a Marvel-compatible server.

    Build it with :meth:`open`; it holds one ``httpx.AsyncClient`` (pooled connections,
    gzip) for its whole life.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        auth: MarvelAuth,
        *,
        retry: RetryPolicy,
        on_request: OnRequest | None,
        before_attempt: BeforeAttempt | None,
        clock: Callable[[], float],
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._http = http
        self._timeout = timeout
        self._auth = auth
        self._retry = retry
        self._on_request = on_request
        self._before_attempt = before_attempt
        self._clock = clock

    def __repr__(self) -> str:
        return f"<MarvelClient {self._http.base_url} apikey={self._auth.public_key!r}>"

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        base_url: str,
        public_key: str,
        private_key: str,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - per HTTP attempt, not a deadline
        retry: RetryPolicy = DEFAULT_RETRY,
        on_request: OnRequest | None = None,
        before_attempt: BeforeAttempt | None = None,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> AsyncIterator[MarvelClient]:
        """A client for ``base_url`` (e.g. ``http://127.0.0.1:8089/v1/public``).

        ``timeout`` bounds each attempt as a whole (a body that trickles in does not reset
        it), and each of its connect, read, write and pool waits; ``clock``
        gives the ``ts`` of the signature; ``transport`` replaces the network (tests).
        """
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"the upstream base_url must be an http(s) URL, got {base_url!r}")
        if not timeout > 0:
            raise ValueError(f"the upstream timeout must be positive, got {timeout}")
        auth = MarvelAuth(public_key, private_key, clock)
        async with httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        ) as http:
            yield cls(
                http,
                auth,
                retry=retry,
                on_request=on_request,
                before_attempt=before_attempt,
                clock=clock,
                timeout=timeout,
            )

    async def list_characters(
        self, params: Mapping[str, str], *, etag: str | None = None, purpose: str = "request"
    ) -> CharacterPage | None:
        """One page of ``GET /characters?{params}``; None when ``etag`` is still current (304)."""
        return await self._get(
            "characters", params, CharacterPage.from_marvel, etag=etag, purpose=purpose
        )

    async def get_character(self, marvel_id: int, *, purpose: str = "request") -> Character:
        """``GET /characters/{id}``; NotFound when the upstream does not know the id."""
        missing = f"character {marvel_id} not found"
        page = await self._get(
            f"characters/{marvel_id}",
            {},
            CharacterPage.from_marvel,
            not_found=missing,
            purpose=purpose,
        )
        assert page is not None  # only a request with an etag can come back None
        if not page.characters:
            raise NotFound(missing)
        return page.characters[0]

    async def _get(
        self,
        path: str,
        params: Mapping[str, str],
        parse: Callable[[Any], T],
        *,
        etag: str | None = None,
        not_found: str | None = None,
        purpose: str = "request",
    ) -> T | None:
        what = f"GET /{path}"
        headers = {"If-None-Match": etag} if etag else {}

        async def attempt() -> T | None:
            if self._before_attempt is not None:
                await self._before_attempt(purpose)
            started = trio.current_time()
            result = await self._exchange(path, params, headers, parse, what, not_found)
            if self._on_request is not None:
                self._on_request(result.outcome, trio.current_time() - started)
            if result.error is not None:
                raise result.error from result.cause
            return result.value

        return await call_with_retries(attempt, self._retry, what)

    async def _exchange(
        self,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        parse: Callable[[Any], T],
        what: str,
        not_found: str | None,
    ) -> _Result[T]:
        """One signed HTTP attempt, classified; translates httpx's errors, raises nothing."""
        query = {**params, **self._auth.params()}  # ours win over look-alike params
        try:
            with trio.move_on_after(self._timeout) as deadline:
                async with self._http.stream(
                    "GET", path, params=query, headers=headers
                ) as streamed:
                    raw = b"".join([chunk async for chunk in streamed.aiter_raw()])
            if deadline.cancelled_caught:
                failed = Retryable(f"timed out: no complete answer in {self._timeout:g}s")
                return _Result("timeout", error=failed)
            # Decoded from memory, not from the live stream: a DecodingError (bad gzip) raised
            # mid-stream leaves httpx's async generators unclosed, which trio reports as a
            # ResourceWarning (encode/httpx#3686). Transport errors close them as they unwind.
            response = httpx.Response(streamed.status_code, headers=streamed.headers, content=raw)
        except httpx.TimeoutException as exc:
            return _Result("timeout", error=Retryable(f"timed out: {_name(exc)}"), cause=exc)
        except httpx.TransportError as exc:
            return _Result("connection_error", error=Retryable(_name(exc)), cause=exc)
        except httpx.DecodingError as exc:
            failed = Retryable(f"undecodable body: {_name(exc)}", malformed=True)
            return _Result("malformed", error=failed, cause=exc)
        return self._classify(
            response, parse, what, not_found, etag_sent="If-None-Match" in headers
        )

    def _classify(
        self,
        response: httpx.Response,
        parse: Callable[[Any], T],
        what: str,
        not_found: str | None,
        *,
        etag_sent: bool,
    ) -> _Result[T]:
        status = response.status_code
        if 200 <= status < 300:
            media_type = response.headers.get("content-type", "")
            if not _is_json(media_type):  # a captive portal or a proxy's page
                kind = media_type.split(";")[0].strip()
                failed = Retryable(
                    f"HTTP {status} with content-type {kind}, not JSON", malformed=True
                )
                return _Result("malformed", error=failed)
            try:
                return _Result("ok", value=parse(json.loads(response.content)))
            except ValueError as exc:  # not JSON (json.JSONDecodeError, UnicodeDecodeError)
                failed = Retryable(f"HTTP {status} with a body that is not JSON", malformed=True)
                return _Result("malformed", error=failed, cause=exc)
            except UpstreamError as exc:  # JSON, but not Marvel's envelope
                failed = Retryable(f"HTTP {status}: {exc}", malformed=True)
                return _Result("malformed", error=failed, cause=exc)
        if status == 304:
            if etag_sent:
                return _Result("not_modified")
            unasked = UpstreamError(f"upstream {what} answered 304 to a request without an etag")
            return _Result("not_modified", error=unasked)
        if status == 429 or status >= 500:
            hint = None
            if status in (429, 503):
                hint = parse_retry_after(response.headers.get("Retry-After"), self._clock())
            outcome = "throttled" if status == 429 else "server_error"
            return _Result(outcome, error=Retryable(f"HTTP {status}", retry_after=hint))
        if 400 <= status < 500:
            if status == 404 and not_found is not None:
                return _Result("not_found", error=NotFound(not_found))
            text, code = _marvel_error(response)
            rejected = UpstreamRejected(text, status=status, code=code)
            return _Result("not_found" if status == 404 else "client_error", error=rejected)
        unexpected = UpstreamError(f"upstream {what} answered an unexpected HTTP {status}")
        return _Result("malformed", error=unexpected)


def _is_json(media_type: str) -> bool:
    """Whether a Content-Type names JSON (``application/json``, ``...+json``); a missing
    one is given the benefit of the doubt, the body is parsed anyway."""
    kind = media_type.split(";")[0].strip().lower()
    return not kind or kind == "application/json" or kind.endswith("+json")


def _marvel_error(response: httpx.Response) -> tuple[str, int | str | None]:
    """Marvel's error text and code: ``code`` is an int or a string, the text is in
    ``message`` or ``status``; bodies may also be empty, HTML or plain text."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    text, code = "", None
    if isinstance(body, dict):
        raw = body.get("code")
        if isinstance(raw, int | str) and not isinstance(raw, bool):
            code = raw
        for key in ("message", "status"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                text = value.strip()
                break
        if not text and isinstance(code, str):
            text = code
    if not text:
        status = response.status_code
        text = f"HTTP {status} {httpx.codes.get_reason_phrase(status)}".strip()
    return text[:MAX_ERROR_TEXT], code


def _name(exc: Exception) -> str:
    """A short description of an httpx error (its text holds no URL, so no signature)."""
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail[:120]}" if detail else type(exc).__name__
