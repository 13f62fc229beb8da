"""``GET /v1/notifications/ws``: notifications over a WebSocket on the HTTP port.

The bearer token comes in the ``Authorization`` header, or in the ``access_token`` query
parameter for browsers (which cannot set headers on a WebSocket); ``after_cursor`` (query)
replays what the user has after it first, as gRPC Subscribe does. Each message is one JSON
object: a notification (``heartbeat: false``, the fields of ``marvel.v1.Notification`` in
snake_case, ``type`` ``CHARACTER_ADDED`` or ``CHARACTER_UPDATED``) or a heartbeat
(``{"heartbeat": true, "cursor": N}``) after ``notifications.heartbeat`` without one.

A refused upgrade is answered with an HTTP error and a problem+json body (as the JSON
gateway answers), never upgraded: 400 naming the parameter (an unknown or repeated one, an
``after_cursor`` that is not an int64 of 0 or more), 401 unauthenticated, 410 a cursor
older than retention, 429 rate limited (``Retry-After``). An accepted socket is closed with
a code that says why and a reason holding the cursor to resume from: 4008 too slow
(evicted), 1001 (going away) the daemon is stopping.

The handler reads the socket as long as it serves, so a close frame or a dropped
connection ends the subscriber at once: its queue, its place in the gauge, its access line.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any, Final

import trio
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from marveld.domain.characters import Character
from marveld.domain.errors import CursorExpired, InvalidArgument, MarveldError
from marveld.domain.notifications import Notification
from marveld.services.broker import EVICTED
from marveld.services.notifications import MAX_CURSOR, NotificationService, Session
from marveld.web.problems import Problem, problem_for, problem_response

log = logging.getLogger(__name__)

PATH: Final = "/v1/notifications/ws"
CHANNEL: Final = "websocket"
CLOSE_EVICTED: Final = 4008
CLOSE_SHUTDOWN: Final = 1001  # going away (RFC 6455 §7.4.1): the server is stopping
CLOSE_POLICY: Final = 1008
CLOSE_GRACE_SECONDS: Final = 1.0
QUERY: Final = ("access_token", "after_cursor")
_DIGITS: Final = re.compile(r"[0-9]+")
_TYPES = {"CharacterAdded": "CHARACTER_ADDED", "CharacterUpdated": "CHARACTER_UPDATED"}


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def character_json(data: Any) -> dict[str, Any]:
    c = Character.from_json(data)
    return {
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "image_url": c.image_url,
        "modified": _time(c.modified),
        "modified_raw": c.modified_raw,
        "resource_uri": c.resource_uri,
        "comics_available": c.comics_available,
        "series_available": c.series_available,
        "stories_available": c.stories_available,
        "events_available": c.events_available,
        "urls": [{"type": u.type, "url": u.url} for u in c.urls],
    }


def notification_json(note: Notification) -> str:
    return json.dumps(
        {
            "heartbeat": False,
            "id": note.id,
            "cursor": note.cursor,
            "type": _TYPES.get(note.type, "NOTIFICATION_TYPE_UNSPECIFIED"),
            "character": character_json(note.character) if note.character else None,
            "occurred_at": _time(note.occurred_at),
            "message": note.message,
            "event_id": note.event_id,
            "correlation_id": note.correlation_id,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _query(ws: WebSocket) -> tuple[str | None, int | None]:
    """``access_token`` and ``after_cursor``, each at most once; an unknown parameter, a
    repeated one or a cursor that is not an int64 of 0 or more is refused by name, at the
    door, as the JSON gateway refuses its query parameters."""
    params: dict[str, str] = {}
    for name, value in ws.query_params.multi_items():
        if name not in QUERY:
            raise InvalidArgument(name, f"unknown parameter (known: {', '.join(QUERY)})")
        if name in params:
            raise InvalidArgument(name, "given more than once")
        params[name] = value
    raw = params.get("after_cursor")
    if raw is None:
        return params.get("access_token"), None
    # Digits only (int() would take " 5", "+5", "5_0" and other scripts' digits), and the
    # length checked before int(), which refuses over 4,300 digits with a ValueError.
    if len(raw) > len(str(MAX_CURSOR)) or not _DIGITS.fullmatch(raw) or int(raw) > MAX_CURSOR:
        raise InvalidArgument("after_cursor", f"must be an integer from 0 to {MAX_CURSOR}")
    return params.get("access_token"), int(raw)


def _problem(exc: MarveldError) -> Problem:
    if isinstance(exc, CursorExpired):
        # Gone: what followed the cursor was deleted; ListNotifications from 0 re-lists.
        return Problem(410, str(exc), field="after_cursor")
    return problem_for(exc)


async def _refuse(ws: WebSocket, exc: MarveldError) -> None:
    """Answer the upgrade with an HTTP error (problem+json), as the gateway answers: a
    client library shows the status and the body (trio-websocket's ConnectionRejected).
    A server without the ASGI denial-response extension gets a close frame instead."""
    problem = _problem(exc)
    log.info("websocket refused (%d): %s", problem.status, problem.detail)
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(problem_response(problem))
    else:  # pragma: no cover - hypercorn has the extension
        await ws.close(code=CLOSE_POLICY, reason=problem.detail[:120])


async def _send(ws: WebSocket, session: Session, text: str) -> bool:
    """Send one message; False when the session was closed (evicted) while it waited."""
    with trio.CancelScope() as scope:

        def wake() -> None:
            if session.closed is not None:
                scope.cancel()

        session.wake_with(wake)
        await ws.send_text(text)
    session.wake_with(_nothing)
    return not scope.cancelled_caught


async def _serve(ws: WebSocket, session: Session, beat: float) -> bool:
    """Serve ``session`` until it is closed (evicted, shutdown: False) or the peer goes
    away (True). One task: between live items it waits on the socket itself, woken by the
    session for a new item, by the clock for a heartbeat, by the peer's close frame or its
    dropped connection (hypercorn's disconnect message). What a client sends is not part
    of the protocol and is dropped."""
    while not session.caught_up:
        for old in await session.replay():
            if not await _send(ws, session, notification_json(old)):
                return False
            session.sent(old)
        session.replayed()
    deadline = trio.current_time() + beat
    while session.closed is None:
        if (note := session.next_nowait()) is not None:
            if not await _send(ws, session, notification_json(note)):
                return False
            session.sent(note)
            deadline = trio.current_time() + beat
            continue
        with trio.move_on_at(deadline) as idle, trio.CancelScope() as woken:
            session.wake_with(woken.cancel)  # no checkpoint since next_nowait: none missed
            if (await ws.receive())["type"] == "websocket.disconnect":
                return True
        session.wake_with(_nothing)
        if idle.cancelled_caught:
            text = json.dumps({"heartbeat": True, "cursor": session.heartbeat_cursor()})
            if not await _send(ws, session, text):
                return False
            deadline = trio.current_time() + beat
    return False


def _nothing() -> None:
    return None


def notifications_app(service: NotificationService) -> ASGIApp:
    """The ASGI app of :data:`PATH` (web/app.py routes WebSockets to it by path)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await endpoint(WebSocket(scope, receive, send))

    async def endpoint(ws: WebSocket) -> None:
        try:
            token, after = _query(ws)
            authorization = ws.headers.get("authorization") or (
                f"Bearer {token}" if token else None
            )
            session = await service.open(authorization, after, channel=CHANNEL)
        except MarveldError as exc:
            await _refuse(ws, exc)
            return
        try:  # from here on the session is subscribed: it is closed however this ends
            await ws.accept()
            if await _serve(ws, session, service.settings.heartbeat):
                log.debug("websocket subscriber of user %s went away", session.user_id)
                return
            cursor = session.resume
            if session.closed == EVICTED:
                code, reason = CLOSE_EVICTED, f"too slow: resume with after_cursor={cursor}"
            else:
                code, reason = CLOSE_SHUTDOWN, f"stopping: resume with after_cursor={cursor}"
            with trio.move_on_after(CLOSE_GRACE_SECONDS):
                await ws.close(code=code, reason=reason)
        except WebSocketDisconnect:
            log.debug("websocket subscriber of user %s went away", session.user_id)
        finally:
            session.close()

    return app
