"""``GET /v1/notifications/ws``: notifications over a WebSocket on the HTTP port.

The bearer token comes in the ``Authorization`` header, or in the ``access_token`` query
parameter for browsers (which cannot set headers on a WebSocket); ``after_cursor`` (query)
replays what the user has after it first, as gRPC Subscribe does. Each message is one JSON
object: a notification (``heartbeat: false``, the fields of ``marvel.v1.Notification`` in
snake_case, ``type`` ``CHARACTER_ADDED`` or ``CHARACTER_UPDATED``) or a heartbeat
(``{"heartbeat": true, "cursor": N}``) after ``notifications.heartbeat`` without one.

A refused upgrade (bad argument, unauthenticated, cursor older than retention, rate
limited) is answered HTTP 403 before the handshake completes; gRPC's ListNotifications
says which. An accepted socket is closed with a code that says why and a reason holding
the cursor to resume from: 4008 too slow (evicted), 1012 the daemon is shutting down.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Final

import trio
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from marveld.domain.characters import Character
from marveld.domain.errors import (
    CursorExpired,
    InvalidArgument,
    MarveldError,
    ResourceExhausted,
    Unauthenticated,
)
from marveld.domain.notifications import Notification
from marveld.services.broker import EVICTED
from marveld.services.notifications import NotificationService, Session

log = logging.getLogger(__name__)

PATH: Final = "/v1/notifications/ws"
CHANNEL: Final = "websocket"
CLOSE_EVICTED: Final = 4008
CLOSE_SHUTDOWN: Final = 1012
CLOSE_GRACE_SECONDS: Final = 1.0
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


def _refusal(exc: MarveldError) -> tuple[int, str]:
    match exc:
        case Unauthenticated():
            return 4401, str(exc)
        case ResourceExhausted():
            return 4429, f"{exc} (retry after {max(1, round(exc.retry_after))} s)"
        case CursorExpired():
            return 4412, str(exc)
        case InvalidArgument():
            return 4400, str(exc)
        case _:
            return 1011, "internal error"


async def _send(ws: WebSocket, session: Session, text: str) -> bool:
    """Send one message; False when the session was closed (evicted) while it waited."""
    with trio.CancelScope() as scope:

        def wake() -> None:
            if session.closed is not None:
                scope.cancel()

        session.wake_with(wake)
        await ws.send_text(text)
    session.wake_with(lambda: None)
    return not scope.cancelled_caught


async def _serve(ws: WebSocket, session: Session, beat: float) -> None:
    while not session.caught_up:
        for old in await session.replay():
            if not await _send(ws, session, notification_json(old)):
                return
            session.sent(old)
        session.replayed()
    note: Notification | None = None
    while session.closed is None:
        with trio.move_on_after(beat) as idle:
            note = await session.next()
        if idle.cancelled_caught:
            text = json.dumps({"heartbeat": True, "cursor": session.heartbeat_cursor()})
            if not await _send(ws, session, text):
                return
        elif note is not None:
            if not await _send(ws, session, notification_json(note)):
                return
            session.sent(note)


def notifications_route(service: NotificationService) -> WebSocketRoute:
    async def endpoint(ws: WebSocket) -> None:
        token = ws.query_params.get("access_token")
        authorization = ws.headers.get("authorization") or (f"Bearer {token}" if token else None)
        try:
            raw = ws.query_params.get("after_cursor")
            try:
                after = None if raw is None else int(raw)
            except ValueError:
                raise InvalidArgument("after_cursor", "must be an integer") from None
            session = await service.open(authorization, after, channel=CHANNEL)
        except MarveldError as exc:
            code, reason = _refusal(exc)
            log.info("websocket refused (%d): %s", code, reason)
            await ws.close(code=code, reason=reason[:120])  # before accept: HTTP 403
            return
        await ws.accept()
        try:
            await _serve(ws, session, service.settings.heartbeat)
            cursor = session.resume
            if session.closed == EVICTED:
                code, reason = CLOSE_EVICTED, f"too slow: resume with after_cursor={cursor}"
            else:
                code, reason = CLOSE_SHUTDOWN, f"shutting down: resume with after_cursor={cursor}"
            with trio.move_on_after(CLOSE_GRACE_SECONDS):
                await ws.close(code=code, reason=reason)
        except WebSocketDisconnect:
            log.debug("websocket subscriber of user %s went away", session.user_id)
        finally:
            session.close()

    return WebSocketRoute(PATH, endpoint)
