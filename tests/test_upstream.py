"""The upstream client against real HTTP servers on loopback.

Rules: port 0 everywhere; servers start with ``nursery.start`` (no sleeps for readiness);
no mocks of marveld code. Marvel's semantics come from the simulator; faults it cannot
produce on cue (exactly N failures, Retry-After, slow or malformed answers, odd error
bodies) come from a small scripted ASGI app, and connection resets from a raw TCP server.
Retries are kept fast with a tiny RetryPolicy; time is only ever bounded from below.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
import socket
import struct
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

import pytest
import trio

from marveld.domain.errors import NotFound, UpstreamError, UpstreamRejected, UpstreamUnavailable
from marveld.sim import SimHandle, SimOptions, run_sim
from marveld.upstream import OUTCOMES, MarvelClient, RetryPolicy
from marveld.upstream.retry import parse_retry_after
from marveld.web.server import serve_asgi

PUBLIC = "pk-test-public"
PRIVATE = "sk-Very-Secret-0123456789"
FAST = RetryPolicy(max_attempts=4, backoff_initial=0.001, backoff_max=0.01)
SPIDER_MAN = 1009610

Json = dict[str, Any]


def character(marvel_id: int = SPIDER_MAN, name: str = "Spider-Man") -> Json:
    return {
        "id": marvel_id,
        "name": name,
        "description": "Bitten by a radioactive spider.",
        "modified": "2014-04-29T14:18:17-0400",
        "thumbnail": {
            "path": "http://i.annihil.us/u/prod/marvel/i/mg/3/50/526548a343e4b",
            "extension": "jpg",
        },
        "resourceURI": f"http://gateway.marvel.com/v1/public/characters/{marvel_id}",
        "comics": {"available": 3, "collectionURI": "", "items": [], "returned": 0},
        "urls": [{"type": "detail", "url": "http://marvel.com/x"}],
    }


def envelope(*results: Json, etag: str = "e1") -> Json:
    return {
        "code": 200,
        "status": "Ok",
        "attributionText": "Data provided by Marvel. © 2026 MARVEL",
        "etag": etag,
        "data": {
            "offset": 0,
            "limit": 20,
            "total": len(results),
            "count": len(results),
            "results": list(results),
        },
    }


# --- a scripted upstream -----------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Json | bytes = field(default_factory=lambda: envelope(character()))
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    gzip: bool = False


@dataclass
class Seen:
    path: str
    raw_query: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float


class Script:
    """An ASGI app that checks Marvel's signature like Marvel (401 when wrong) and then
    answers with ``replies`` in order, repeating the last one. ``seen`` records each call."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = replies or (Reply(),)
        self.seen: list[Seen] = []

    async def __call__(
        self, scope: Json, receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw_query = scope["query_string"].decode()
        query = dict(parse_qsl(raw_query))
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append(Seen(scope["path"], raw_query, query, headers, trio.current_time()))
        reply = self.replies[min(len(self.seen), len(self.replies)) - 1]
        expected = hashlib.md5((query.get("ts", "") + PRIVATE + PUBLIC).encode()).hexdigest()
        if query.get("apikey") != PUBLIC or query.get("hash") != expected:
            reply = Reply(
                401, {"code": "InvalidCredentials", "message": "The passed API key is invalid."}
            )
        if reply.delay:
            await trio.sleep(reply.delay)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        out = [(k.encode(), v.encode()) for k, v in reply.headers]
        if reply.gzip:
            body = gzip.compress(body)
            out.append((b"content-encoding", b"gzip"))
        if reply.status != 304:
            out.append((b"content-type", b"application/json; charset=utf-8"))
        await send({"type": "http.response.start", "status": reply.status, "headers": out})
        await send({"type": "http.response.body", "body": body if reply.status != 304 else b""})


async def serve(nursery: trio.Nursery, app: Any) -> str:
    port = await nursery.start(serve_asgi, app, "127.0.0.1", 0)
    return f"http://127.0.0.1:{port}/v1/public"


class Recorder:
    """The ``on_request`` hook: keeps each attempt's outcome and duration."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def __call__(self, outcome: str, seconds: float) -> None:
        assert outcome in OUTCOMES
        assert seconds >= 0
        self.calls.append((outcome, seconds))

    @property
    def outcomes(self) -> list[str]:
        return [outcome for outcome, _ in self.calls]


def client(
    url: str, *, retry: RetryPolicy = FAST, timeout: float = 5.0, hook: Recorder | None = None
) -> AbstractAsyncContextManager[MarvelClient]:
    return MarvelClient.open(
        base_url=url,
        public_key=PUBLIC,
        private_key=PRIVATE,
        timeout=timeout,
        retry=retry,
        on_request=hook,
    )


# --- the signature and the happy path ------------------------------------------------------


async def test_every_attempt_is_signed_with_a_fresh_ts(nursery: trio.Nursery) -> None:
    script = Script(Reply(500), Reply(500), Reply())
    url = await serve(nursery, script)
    async with client(url) as marvel:
        page = await marvel.list_characters({"nameStartsWith": "Spi", "limit": "5"})
    assert page is not None
    assert [c.name for c in page.characters] == ["Spider-Man"]
    assert len(script.seen) == 3
    for seen in script.seen:
        assert seen.path == "/v1/public/characters"
        assert seen.query["nameStartsWith"] == "Spi"
        assert seen.query["limit"] == "5"
        assert seen.query["apikey"] == PUBLIC
        ts = seen.query["ts"]
        assert seen.query["hash"] == hashlib.md5(f"{ts}{PRIVATE}{PUBLIC}".encode()).hexdigest()
        assert PRIVATE not in seen.raw_query
        assert "gzip" in seen.headers["accept-encoding"]
    assert len({seen.query["ts"] for seen in script.seen}) == 3


async def test_caller_params_cannot_override_the_signature(nursery: trio.Nursery) -> None:
    script = Script()
    url = await serve(nursery, script)
    async with client(url) as marvel:
        await marvel.list_characters({"apikey": "evil", "hash": "0", "ts": "1"})
    assert script.seen[0].query["apikey"] == PUBLIC


async def test_gzip_body_is_decoded(nursery: trio.Nursery) -> None:
    url = await serve(nursery, Script(Reply(gzip=True)))
    async with client(url) as marvel:
        page = await marvel.list_characters({})
    assert page is not None
    assert page.characters[0].id == SPIDER_MAN
    assert page.etag == "e1"


async def test_get_character_returns_the_first_result(nursery: trio.Nursery) -> None:
    script = Script()
    url = await serve(nursery, script)
    hook = Recorder()
    async with client(url, hook=hook) as marvel:
        found = await marvel.get_character(SPIDER_MAN)
    assert found.name == "Spider-Man"
    assert found.image_url.endswith("526548a343e4b.jpg")
    assert script.seen[0].path == f"/v1/public/characters/{SPIDER_MAN}"
    assert hook.outcomes == ["ok"]


async def test_get_character_with_empty_results_is_not_found(nursery: trio.Nursery) -> None:
    url = await serve(nursery, Script(Reply(body=envelope())))
    async with client(url) as marvel:
        with pytest.raises(NotFound, match="character 5 not found"):
            await marvel.get_character(5)


async def test_404_is_not_found_and_not_retried(nursery: trio.Nursery) -> None:
    script = Script(Reply(404, {"code": 404, "status": "We couldn't find that character"}))
    url = await serve(nursery, script)
    hook = Recorder()
    async with client(url, hook=hook) as marvel:
        with pytest.raises(NotFound, match=r"^character 42 not found$"):
            await marvel.get_character(42)
    assert len(script.seen) == 1
    assert hook.outcomes == ["not_found"]


async def test_etag_is_sent_and_304_means_not_modified(nursery: trio.Nursery) -> None:
    script = Script(Reply(304))
    url = await serve(nursery, script)
    hook = Recorder()
    async with client(url, hook=hook) as marvel:
        assert await marvel.list_characters({"limit": "1"}, etag="abc123") is None
    assert script.seen[0].headers["if-none-match"] == "abc123"
    assert hook.outcomes == ["not_modified"]


async def test_304_without_an_etag_is_an_upstream_error(nursery: trio.Nursery) -> None:
    url = await serve(nursery, Script(Reply(304)))
    async with client(url) as marvel:
        with pytest.raises(UpstreamError, match="304"):
            await marvel.list_characters({})


# --- rejections: never retried -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "text", "code"),
    [
        (
            409,
            {"code": 409, "status": "You may not request more than 100 items."},
            "You may not request more than 100 items.",
            409,
        ),
        (
            409,
            {"code": "MissingParameter", "message": "You must provide a user key."},
            "You must provide a user key.",
            "MissingParameter",
        ),
        (401, {"code": "InvalidCredentials"}, "InvalidCredentials", "InvalidCredentials"),
        (403, b"<html><body>Forbidden</body></html>", "HTTP 403 Forbidden", None),
        (400, b"", "HTTP 400 Bad Request", None),
        (409, {"code": True, "status": ["not", "text"]}, "HTTP 409 Conflict", None),
        (404, {"code": 404, "status": "no such path"}, "no such path", 404),
    ],
)
async def test_4xx_is_rejected_once_with_marvels_text_and_code(
    nursery: trio.Nursery, status: int, body: Json | bytes, text: str, code: int | str | None
) -> None:
    script = Script(Reply(status, body))
    url = await serve(nursery, script)
    hook = Recorder()
    async with client(url, hook=hook) as marvel:
        with pytest.raises(UpstreamRejected) as caught:
            await marvel.list_characters({"limit": "101"})
    assert str(caught.value) == text
    assert caught.value.status == status
    assert caught.value.code == code
    assert len(script.seen) == 1
    assert hook.outcomes == ["not_found" if status == 404 else "client_error"]


async def test_unexpected_status_is_an_upstream_error(nursery: trio.Nursery) -> None:
    url = await serve(nursery, Script(Reply(302, b"", headers=(("location", "/elsewhere"),))))
    hook = Recorder()
    async with client(url, hook=hook) as marvel:
        with pytest.raises(UpstreamError, match="unexpected HTTP 302"):
            await marvel.list_characters({})
    assert hook.outcomes == ["malformed"]


# --- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (Reply(500, b"oops"), "server_error"),
        (Reply(502, b""), "server_error"),
        (Reply(503, {"code": 503, "status": "busy"}), "server_error"),
        (Reply(429, {"code": "RequestThrottled", "message": "slow down"}), "throttled"),
    ],
)
async def test_server_errors_and_throttling_are_retried(
    nursery: trio.Nursery, reply: Reply, outcome: str
) -> None:
    script = Script(reply, reply, Reply())
    url = await serve(nursery, script)
    hook = Recorder()
    async with client(url, hook=hook) as marvel:
        page = await marvel.list_characters({})
    assert page is not None
    assert len(script.seen) == 3
    assert hook.outcomes == [outcome, outcome, "ok"]


async def test_attempts_exhausted_is_unavailable(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(Reply(500, b"down"))
    url = await serve(nursery, script)
    hook = Recorder()
    with caplog.at_level(logging.WARNING, logger="marveld.upstream"):
        async with client(url, hook=hook) as marvel:
            with pytest.raises(UpstreamUnavailable, match=r"HTTP 500.*after 4 attempt") as caught:
                await marvel.list_characters({})
    assert caught.value.retry_after is None
    assert len(script.seen) == 4
    assert hook.outcomes == ["server_error"] * 4
    retries = [r.getMessage() for r in caplog.records if r.name == "marveld.upstream.retry"]
    assert len(retries) == 3
    assert "upstream GET /characters failed (HTTP 500), retry 2/4 in" in retries[0]


async def test_single_attempt_policy_does_not_retry(nursery: trio.Nursery) -> None:
    script = Script(Reply(500))
    url = await serve(nursery, script)
    async with client(url, retry=RetryPolicy(max_attempts=1)) as marvel:
        with pytest.raises(UpstreamUnavailable, match="after 1 attempt"):
            await marvel.list_characters({})
    assert len(script.seen) == 1


async def test_timeout_is_retried(nursery: trio.Nursery) -> None:
    script = Script(Reply(delay=2.0), Reply())
    url = await serve(nursery, script)
    hook = Recorder()
    async with client(url, timeout=0.2, hook=hook) as marvel:
        page = await marvel.list_characters({})
    assert page is not None
    assert hook.outcomes == ["timeout", "ok"]
    assert hook.calls[0][1] >= 0.2
    assert len(script.seen) == 2


async def test_timeouts_exhausted_is_unavailable(nursery: trio.Nursery) -> None:
    url = await serve(nursery, Script(Reply(delay=2.0)))
    async with client(url, timeout=0.1, retry=RetryPolicy(2, 0.001, 0.01)) as marvel:
        with pytest.raises(UpstreamUnavailable, match=r"timed out.*after 2 attempt"):
            await marvel.list_characters({})


async def test_retry_after_is_honoured(nursery: trio.Nursery) -> None:
    hinted = Reply(503, b"", headers=(("retry-after", "0.2"),))
    script = Script(hinted, Reply())
    url = await serve(nursery, script)
    async with client(url, retry=RetryPolicy(4, 0.001, 1.0)) as marvel:
        assert await marvel.list_characters({}) is not None
    first, second = script.seen
    assert second.at - first.at >= 0.2


async def test_retry_after_longer_than_the_cap_gives_up_at_once(nursery: trio.Nursery) -> None:
    script = Script(
        Reply(429, {"code": "RequestThrottled", "message": "quota"}, (("Retry-After", "3600"),))
    )
    url = await serve(nursery, script)
    hook = Recorder()
    async with client(url, hook=hook) as marvel:
        with pytest.raises(UpstreamUnavailable, match="3600s") as caught:
            await marvel.list_characters({})
    assert caught.value.retry_after == 3600
    assert len(script.seen) == 1
    assert hook.outcomes == ["throttled"]


async def test_last_retry_after_is_reported_when_attempts_run_out(nursery: trio.Nursery) -> None:
    url = await serve(nursery, Script(Reply(429, b"", (("Retry-After", "0"),))))
    async with client(url, retry=RetryPolicy(2, 0.001, 0.01)) as marvel:
        with pytest.raises(UpstreamUnavailable) as caught:
            await marvel.list_characters({})
    assert caught.value.retry_after == 0


async def test_a_cancel_scope_interrupts_a_retry_wait(nursery: trio.Nursery) -> None:
    script = Script(Reply(503, b"", (("Retry-After", "30"),)))
    url = await serve(nursery, script)
    async with client(url, retry=RetryPolicy(4, 0.001, 60.0)) as marvel:
        with trio.move_on_after(0.3) as scope:
            await marvel.list_characters({})
    assert scope.cancelled_caught
    assert len(script.seen) == 1


# --- malformed answers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"code": 200, "data": {"offset": 0, "results": [',  # truncated
        b"",
        b"not json at all",
        b'{"code": 200, "status": "Ok"}',  # JSON, not Marvel's shape
        b"[1, 2, 3]",
        json.dumps(envelope({"id": "1", "name": 3})).encode(),  # a character of the wrong types
    ],
)
async def test_malformed_answer_is_retried_once(nursery: trio.Nursery, body: bytes) -> None:
    script = Script(Reply(body=body), Reply())
    url = await serve(nursery, script)
    hook = Recorder()
    async with client(url, hook=hook) as marvel:
        assert await marvel.list_characters({}) is not None
    assert hook.outcomes == ["malformed", "ok"]


async def test_malformed_twice_is_an_upstream_error(nursery: trio.Nursery) -> None:
    script = Script(Reply(body=b"{"))
    url = await serve(nursery, script)
    hook = Recorder()
    async with client(url, hook=hook) as marvel:
        with pytest.raises(UpstreamError, match="not JSON") as caught:
            await marvel.get_character(SPIDER_MAN)
    assert not isinstance(caught.value, UpstreamUnavailable)
    assert len(script.seen) == 2
    assert hook.outcomes == ["malformed", "malformed"]


async def test_broken_gzip_is_malformed(nursery: trio.Nursery) -> None:
    bad = Reply(body=b"\x1f\x8b\x08\x00 this is not gzip", headers=(("content-encoding", "gzip"),))
    url = await serve(nursery, Script(bad))
    hook = Recorder()
    async with client(url, hook=hook) as marvel:
        with pytest.raises(UpstreamError, match="undecodable"):
            await marvel.list_characters({})
    assert hook.outcomes == ["malformed", "malformed"]


# --- connection faults ---------------------------------------------------------------------


async def resetting_server(nursery: trio.Nursery, drops: int) -> tuple[str, list[int]]:
    """A raw HTTP/1.1 server that resets the first ``drops`` connections after reading the
    request, then answers each with a Marvel page (one request per connection)."""
    hits: list[int] = []
    body = json.dumps(envelope(character())).encode()

    async def handle(stream: trio.SocketStream) -> None:
        hits.append(1)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        if len(hits) <= drops:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()  # linger 0: the peer sees a reset
            return
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        await stream.send_all(head.encode() + body)
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1/public", hits


async def test_connection_resets_are_retried(nursery: trio.Nursery) -> None:
    url, hits = await resetting_server(nursery, drops=2)
    hook = Recorder()
    async with client(url, hook=hook) as marvel:
        page = await marvel.list_characters({})
    assert page is not None
    assert len(hits) == 3
    assert hook.outcomes == ["connection_error", "connection_error", "ok"]


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as bound:  # bound but not listening: every connect is refused
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}/v1/public"
        hook = Recorder()
        async with client(url, hook=hook) as marvel:
            with pytest.raises(
                UpstreamUnavailable, match=r"ConnectError.*after 4 attempt"
            ) as caught:
                await marvel.get_character(1)
    assert hook.outcomes == ["connection_error"] * 4
    assert caught.value.__cause__ is not None


# --- secrets -----------------------------------------------------------------------------------


async def test_the_private_key_never_leaks(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    script = Script(
        Reply(500, b"x"),
        Reply(429, b"", (("Retry-After", "0"),)),
        Reply(body=b"{"),
        Reply(body=b"{"),
        Reply(409, {"code": 409, "status": "bad"}),
        Reply(delay=2.0),
    )
    url = await serve(nursery, script)
    errors: list[BaseException] = []
    with caplog.at_level(logging.DEBUG):
        async with client(url, timeout=0.2, retry=RetryPolicy(2, 0.001, 0.01)) as marvel:
            assert PRIVATE not in repr(marvel)
            assert PRIVATE not in repr(marvel._auth)
            for _ in range(4):
                try:
                    await marvel.list_characters({"name": "Spider-Man"})
                except UpstreamError as exc:
                    errors.append(exc)
        async with MarvelClient.open(base_url=url, public_key="wrong", private_key=PRIVATE) as bad:
            with pytest.raises(UpstreamRejected) as caught:
                await bad.get_character(SPIDER_MAN)
            errors.append(caught.value)
    assert len(errors) == 5
    assert caplog.records
    for record in caplog.records:
        assert PRIVATE not in record.getMessage()
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            assert PRIVATE not in str(chain)
            assert PRIVATE not in repr(chain)
            chain = chain.__cause__ or chain.__context__
    for seen in script.seen:
        assert PRIVATE not in seen.raw_query
        assert PRIVATE not in json.dumps(seen.headers)


# --- configuration and helpers -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"backoff_initial": -1.0},
        {"backoff_initial": 2.0, "backoff_max": 1.0},
    ],
)
def test_retry_policy_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"max_attempts|backoff"):
        RetryPolicy(**kwargs)


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_initial=0.1, backoff_max=1.0)
    rng = random.Random(7)
    for failures, ceiling in [
        (1, 0.1),
        (2, 0.2),
        (3, 0.4),
        (4, 0.8),
        (5, 1.0),
        (9, 1.0),
        (500, 1.0),
    ]:
        waits = [policy.backoff(failures, rng) for _ in range(200)]
        assert all(0.0 <= w <= ceiling for w in waits)
        assert min(waits) < ceiling * 0.1  # full jitter reaches down to zero
        assert max(waits) > ceiling * 0.9


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        (" 0.25 ", 0.25),
        ("-4", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:28:30 -0000", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    now = 1445412480.0  # 2015-10-21T07:28:00Z
    assert parse_retry_after(value, now) == seconds


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "ftp://example.com/v1/public"},
        {"base_url": "/v1/public"},
        {"timeout": 0.0},
        {"public_key": ""},
        {"private_key": "  "},
    ],
)
async def test_open_refuses_bad_settings(kwargs: dict[str, Any]) -> None:
    settings: dict[str, Any] = {
        "base_url": "http://127.0.0.1:1/v1/public",
        "public_key": PUBLIC,
        "private_key": PRIVATE,
    }
    settings.update(kwargs)
    with pytest.raises(ValueError) as caught:  # noqa: PT011 - the message names the setting
        async with MarvelClient.open(**settings):
            pass
    assert PRIVATE not in str(caught.value)


async def test_ts_comes_from_the_clock_and_never_repeats(nursery: trio.Nursery) -> None:
    script = Script()
    url = await serve(nursery, script)
    async with MarvelClient.open(
        base_url=url, public_key=PUBLIC, private_key=PRIVATE, clock=lambda: 1_700_000_000.0
    ) as marvel:
        for _ in range(3):
            await marvel.list_characters({})
    assert [s.query["ts"] for s in script.seen] == [
        "1700000000000",
        "1700000000001",
        "1700000000002",
    ]


# --- against the simulator ---------------------------------------------------------------------


@pytest.fixture
async def upstream_sim(nursery: trio.Nursery) -> SimHandle:
    """The simulator with its generated catalogue and this module's keys."""
    options = SimOptions(port=0, public_key=PUBLIC, private_key=PRIVATE, seed=0)
    handle: SimHandle = await nursery.start(run_sim, options)
    return handle


async def test_sim_lists_and_revalidates_with_etag(upstream_sim: SimHandle) -> None:
    hook = Recorder()
    async with client(upstream_sim.url, hook=hook) as marvel:
        page = await marvel.list_characters({"nameStartsWith": "Spider", "limit": "5"})
        assert page is not None
        assert "Spider-Man" in [c.name for c in page.characters]
        assert page.etag
        assert (
            await marvel.list_characters({"nameStartsWith": "Spider", "limit": "5"}, etag=page.etag)
            is None
        )
        changed = await marvel.list_characters(
            {"nameStartsWith": "Spider", "limit": "1"}, etag=page.etag
        )
    assert changed is not None
    assert hook.outcomes == ["ok", "not_modified", "ok"]


async def test_sim_get_character_and_not_found(upstream_sim: SimHandle) -> None:
    async with client(upstream_sim.url) as marvel:
        spider = await marvel.get_character(SPIDER_MAN)
        assert spider.id == SPIDER_MAN
        assert spider.name == "Spider-Man"
        with pytest.raises(NotFound, match="character 1 not found"):
            await marvel.get_character(1)


async def test_sim_wrong_keys_are_a_credentials_problem(upstream_sim: SimHandle) -> None:
    hook = Recorder()
    async with MarvelClient.open(
        base_url=upstream_sim.url,
        public_key=PUBLIC,
        private_key="not-the-key",
        retry=FAST,
        on_request=hook,
    ) as marvel:
        with pytest.raises(UpstreamRejected) as caught:
            await marvel.list_characters({})
    assert caught.value.is_credentials_problem
    assert caught.value.code == "InvalidCredentials"
    assert upstream_sim.state.requests == 1
    assert hook.outcomes == ["client_error"]


async def test_sim_failures_are_retried_then_exhausted(upstream_sim: SimHandle) -> None:
    upstream_sim.state.fail_rate = 1.0
    hook = Recorder()
    async with client(upstream_sim.url, hook=hook) as marvel:
        with pytest.raises(UpstreamUnavailable, match="after 4 attempt"):
            await marvel.get_character(SPIDER_MAN)
        assert upstream_sim.state.requests == 4
        assert set(hook.outcomes) <= {"server_error", "connection_error"}
        upstream_sim.state.fail_rate = 0.0
        assert (await marvel.get_character(SPIDER_MAN)).name == "Spider-Man"


async def test_sim_daily_limit_throttles(nursery: trio.Nursery) -> None:
    options = SimOptions(port=0, public_key=PUBLIC, private_key=PRIVATE, daily_limit=1)
    handle: SimHandle = await nursery.start(run_sim, options)
    hook = Recorder()
    async with client(handle.url, hook=hook) as marvel:
        await marvel.get_character(SPIDER_MAN)
        with pytest.raises(UpstreamUnavailable) as caught:
            await marvel.get_character(SPIDER_MAN)
    assert "throttled" in hook.outcomes
    assert caught.value.retry_after is not None
