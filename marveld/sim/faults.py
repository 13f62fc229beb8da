"""Upstream faults the simulator can inject into character API calls, for the reliability
suites: what each looks like on the wire, and the plan that picks one per call.

A plan has a *rate* per fault (the share of calls that get it, drawn from the seeded
random generator) and a *script*: faults for the next calls in order, ahead of the rates
(``None`` in a script lets one call through), so a test can say "the next two calls time
out". Set it with ``--fault KIND=RATE`` at start, through ``SimState.plan`` in-process, or
over HTTP while running::

    PUT /_sim/faults {"rates": {"timeout": 0.1}, "script": ["500", null, "reset"],
                      "hang_seconds": 30, "slow_seconds": 3}
    GET /_sim/faults    -> the plan, and how many of each fault were injected
"""

from __future__ import annotations

import enum
import json
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from marveld.sim import errors
from marveld.sim.render import read_body

FAULTS_PATH: Final = "/_sim/faults"
JSON_TYPE: Final = "application/json; charset=utf-8"
DEFAULT_HANG_SECONDS: Final = 30.0
DEFAULT_SLOW_SECONDS: Final = 3.0
SLOW_CHUNKS: Final = 10
MAX_BODY_BYTES: Final = 64 * 1024
# A dropped connection announces more body than it sends, so no client can take it for an
# answer: httpx raises RemoteProtocolError (a TransportError).
RESET_PROMISED_BYTES: Final = 4096
# What a proxy or captive portal in the way sends: a 200 that is not the API's.
PORTAL_PAGE: Final = b"<html><body><h1>Service temporarily unavailable</h1></body></html>"
# Not JSON: an object whose keys are not quoted.
BROKEN_JSON: Final = b'{code: 200, status: "Ok", data: {results: []}}'
# JSON, but not Marvel's character envelope: an id that is not a number, no name.
WRONG_SHAPE: Final = json.dumps(
    {
        "code": 200,
        "status": "Ok",
        "data": {"offset": 0, "limit": 20, "total": 1, "count": 1, "results": [{"id": "x"}]},
    }
).encode()


class Fault(enum.Enum):
    """What an injected fault looks like to the client. The value is its name in
    ``--fault``, in ``/_sim/faults`` and in the stats."""

    ERROR = "500"  # a 500 with Marvel's body
    UNAVAILABLE = "503"  # a 503 with Retry-After: 1
    THROTTLED = "429"  # Marvel's 429 with Retry-After: 1
    THROTTLED_BARE = "429-bare"  # a 429 without Retry-After
    RESET = "reset"  # the connection drops before a complete answer
    TIMEOUT = "timeout"  # no answer for hang_seconds, then a 504
    SLOW_BODY = "slow-body"  # the real answer, its body spread over slow_seconds
    TRUNCATED = "truncated"  # a 200 whose JSON body stops halfway (length agrees)
    MALFORMED = "malformed"  # a 200 whose body is not JSON
    WRONG_SHAPE = "wrong-shape"  # a 200 with JSON that is not a character page
    WRONG_TYPE = "wrong-type"  # a 200 text/html page, the kind a captive portal sends
    LYING_ETAG = "lying-etag"  # 304 to every If-None-Match, whatever changed (only
    # conditional requests draw it: the others are answered right)

    @classmethod
    def named(cls, name: str) -> Fault:
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(f.value for f in cls)
            raise ValueError(f"unknown fault {name!r} (known: {known})") from None


@dataclass
class FaultPlan:
    """Which calls get which fault. ``rates`` must add up to at most 1."""

    rates: dict[Fault, float] = field(default_factory=dict)
    script: deque[Fault | None] = field(default_factory=deque)
    hang_seconds: float = DEFAULT_HANG_SECONDS
    slow_seconds: float = DEFAULT_SLOW_SECONDS
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for fault, rate in self.rates.items():
            if not 0.0 <= rate <= 1.0:  # also refuses NaN
                raise ValueError(f"the rate of fault {fault.value} must be 0..1, not {rate}")
        if sum(self.rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates add up to more than 1")
        for name in ("hang_seconds", "slow_seconds"):
            value = getattr(self, name)
            if not 0.0 <= value <= 3600.0:
                raise ValueError(f"{name} must be 0..3600, not {value}")

    def pick(self, draw: float) -> Fault | None:
        """The fault for one call: the script's next entry, else by ``draw`` (0..1)."""
        if self.script:
            return self.script.popleft()
        for fault, rate in self.rates.items():
            if draw < rate:
                return fault
            draw -= rate
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "rates": {fault.value: rate for fault, rate in self.rates.items()},
            "script": [None if f is None else f.value for f in self.script],
            "hang_seconds": self.hang_seconds,
            "slow_seconds": self.slow_seconds,
            "injected": dict(self.injected),
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> FaultPlan:
        """A plan from ``PUT /_sim/faults``; ValueError naming the field when it is wrong."""
        unknown = set(body) - {"rates", "script", "hang_seconds", "slow_seconds"}
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        rates = body.get("rates", {})
        script = body.get("script", [])
        if not isinstance(rates, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in rates.values()
        ):
            raise ValueError("rates must be an object of fault names to numbers")
        if not isinstance(script, list) or not all(s is None or isinstance(s, str) for s in script):
            raise ValueError("script must be a list of fault names or nulls")
        seconds: dict[str, float] = {}
        for name in ("hang_seconds", "slow_seconds"):
            if name in body:
                value = body[name]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{name} must be a number")
                seconds[name] = float(value)
        return cls(
            rates={Fault.named(k): float(v) for k, v in rates.items()},
            script=deque(None if s is None else Fault.named(s) for s in script),
            hang_seconds=seconds.get("hang_seconds", DEFAULT_HANG_SECONDS),
            slow_seconds=seconds.get("slow_seconds", DEFAULT_SLOW_SECONDS),
        )


def parse_fault_arguments(values: Iterable[str]) -> dict[Fault, float]:
    """``--fault KIND=RATE`` values as rates; ValueError naming the bad one."""
    rates: dict[Fault, float] = {}
    for value in values:
        name, sep, rate = value.partition("=")
        if not sep:
            raise ValueError(f"--fault {value!r}: expected KIND=RATE, e.g. timeout=0.1")
        try:
            rates[Fault.named(name.strip())] = float(rate)
        except ValueError as exc:
            raise ValueError(f"--fault {value!r}: {exc}") from None
    return rates


async def inject(
    fault: Fault, plan: FaultPlan, app: ASGIApp, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer one call with ``fault`` (``app`` makes the real answer where one is needed)."""
    if fault is Fault.ERROR:
        await _send_error(send, errors.internal_error())
    elif fault is Fault.UNAVAILABLE:
        await _send_error(send, errors.service_unavailable(retry_after=1))
    elif fault is Fault.THROTTLED:
        await _send_error(send, errors.throttled(1))
    elif fault is Fault.THROTTLED_BARE:
        refusal = errors.throttled(1)
        refusal.headers.clear()
        await _send_error(send, refusal)
    elif fault is Fault.RESET:
        await _drop(send)
    elif fault is Fault.TIMEOUT:
        await trio.sleep(plan.hang_seconds)
        await _send_error(send, errors.gateway_timeout())
    elif fault is Fault.MALFORMED:
        await _send_body(send, 200, BROKEN_JSON, JSON_TYPE)
    elif fault is Fault.WRONG_SHAPE:
        await _send_body(send, 200, WRONG_SHAPE, JSON_TYPE)
    elif fault is Fault.WRONG_TYPE:
        await _send_body(send, 200, PORTAL_PAGE, "text/html; charset=utf-8")
    elif fault is Fault.LYING_ETAG:
        await _lie(scope, send)
    else:  # SLOW_BODY, TRUNCATED: the real answer, delivered wrong
        status, headers, body = await _answer(app, _plain(scope), receive)
        if fault is Fault.TRUNCATED and status == 200:
            body = body[: len(body) // 2]
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if fault is Fault.TRUNCATED:
            await send({"type": "http.response.body", "body": body})
        else:
            await _drip(send, body, plan.slow_seconds)


async def _lie(scope: Scope, send: Send) -> None:
    """304 to a conditional request, naming the etag it sent, whatever changed."""
    sent = dict(scope["headers"]).get(b"if-none-match", b"")
    await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", sent)]})
    await send({"type": "http.response.body", "body": b""})


def _plain(scope: Scope) -> Scope:
    """``scope`` without Accept-Encoding, so the answer's body is plain JSON."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"accept-encoding"]
    return {**scope, "headers": headers}


async def _answer(
    app: ASGIApp, scope: Scope, receive: Receive
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run ``app`` and keep its whole answer instead of sending it."""
    start: dict[str, Any] = {}
    parts: list[bytes] = []

    async def keep(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await app(scope, receive, keep)
    return int(start["status"]), list(start.get("headers", [])), b"".join(parts)


async def _drip(send: Send, body: bytes, seconds: float) -> None:
    """``body`` in ``SLOW_CHUNKS`` pieces, ``seconds`` spread between them."""
    step = max(1, -(-len(body) // SLOW_CHUNKS))
    for start in range(0, len(body), step):
        await trio.sleep(seconds / SLOW_CHUNKS)
        more = start + step < len(body)
        await send(
            {"type": "http.response.body", "body": body[start : start + step], "more_body": more}
        )
    if not body:
        await send({"type": "http.response.body", "body": b""})


async def _send_body(send: Send, status: int, body: bytes, media_type: str) -> None:
    headers = [(b"content-type", media_type.encode()), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: errors.ApiError) -> None:
    body = error.encoded()
    headers = [(b"content-type", JSON_TYPE.encode()), (b"content-length", b"%d" % len(body))]
    headers += [(k.encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drop(send: Send) -> None:
    """Start an answer and end the app without its body: hypercorn then closes the
    connection, and the client sees the peer hang up mid-message."""
    headers = [
        (b"content-type", JSON_TYPE.encode()),
        (b"content-length", b"%d" % RESET_PROMISED_BYTES),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 500, "headers": headers})


class FaultsApi:
    """``GET`` and ``PUT /_sim/faults`` over the plan held by ``holder.plan``."""

    def __init__(self, holder: Any) -> None:
        self._holder = holder

    async def get(self, request: Request) -> Response:
        return _json(self._holder.plan.to_json())

    async def put(self, request: Request) -> Response:
        raw = await read_body(request)
        if len(raw) > MAX_BODY_BYTES:
            raise errors.bad_change("the fault plan is too large")
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            plan = FaultPlan.from_json(body)
        except ValueError as exc:
            raise errors.bad_change(f"fault plan: {exc}") from None
        self._holder.plan = plan
        return _json(plan.to_json())


def _json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body).encode(), media_type=JSON_TYPE)
