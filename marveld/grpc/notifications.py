"""marvel.v1.NotificationService: Subscribe (a server stream), ListNotifications, and the
user's subscription.

Subscribe follows DESIGN §8. The handler is asyncio code; it hops into trio once to open
the session and once per replayed page (``trio_as_aio``), never per live item: live items
are taken from the subscriber's trio channel with the synchronous ``receive_nowait``, and
the broker wakes the handler through an ``asyncio.Event`` it sets synchronously. No trio
object is awaited from asyncio and no asyncio object from trio. A client reset cancels the
handler; its ``finally`` unsubscribes at once (no async generator is involved, so nothing
waits for garbage collection).

A message is started only when the stream's HTTP/2 window can take it whole, so a slow
client is never cut in the middle of a message: while it is waiting for window the broker
may evict it, and the stream ends with RESOURCE_EXHAUSTED and its resume cursor (message
and ``resume-cursor`` trailer). At shutdown the streams end with UNAVAILABLE and their
cursor before the server closes (:func:`end_streams`, called by ``GrpcFace``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import grpclib.const
import grpclib.server
import trio_asyncio
from google.protobuf.message_factory import GetMessageClass
from grpclib.const import Status

from marveld.domain.changes import CHARACTER_ADDED
from marveld.domain.characters import Character
from marveld.domain.notifications import EVERYTHING, Filter, Notification
from marveld.grpc import wire
from marveld.grpc.bridge import CallContext, Service, _call_in_trio, context_of, unary
from marveld.grpc.convert import _fill_character
from marveld.proto.google_proto_descriptor_pool import default_google_proto_descriptor_pool
from marveld.proto.marvel import v1 as pb
from marveld.services.broker import EVICTED
from marveld.services.notifications import NotificationService, Session

log = logging.getLogger(__name__)

PACKAGE = "marvel.v1"
CHANNEL: Final = "grpc"
RESUME_TRAILER: Final = "resume-cursor"
OPEN_SECONDS: Final = 30.0
REPLAY_SECONDS: Final = 60.0
# Wait for window in slices this long, checking whether the subscriber was evicted.
WINDOW_POLL_SECONDS: Final = 0.05
_MAX_WHOLE = 16384  # larger messages may wait for window in the middle (none are this big)

_UPB_NOTIFICATION: Any = GetMessageClass(
    default_google_proto_descriptor_pool.FindMessageTypeByName("marvel.v1.Notification")
)
_UPB_LIST: Any = GetMessageClass(
    default_google_proto_descriptor_pool.FindMessageTypeByName(
        "marvel.v1.ListNotificationsResponse"
    )
)
_TYPES = {
    CHARACTER_ADDED: pb.NotificationType.CHARACTER_ADDED.value,
    "CharacterUpdated": pb.NotificationType.CHARACTER_UPDATED.value,
}


def fill(message: Any, note: Notification) -> None:
    message.id = note.id
    message.cursor = note.cursor
    message.type = _TYPES.get(note.type, 0)
    if note.character:
        _fill_character(message.character, Character.from_json(note.character))
    message.occurred_at.FromDatetime(note.occurred_at)
    message.message = note.message
    message.event_id = note.event_id
    message.correlation_id = note.correlation_id


def encode(note: Notification) -> bytes:
    message = _UPB_NOTIFICATION()
    fill(message, note)
    return bytes(message.SerializeToString())


def heartbeat(cursor: int) -> bytes:
    return bytes(_UPB_NOTIFICATION(cursor=cursor, heartbeat=True).SerializeToString())


def _filter(request: pb.SubscribeRequest) -> Filter:
    f = request.filter
    if f is None:
        return EVERYTHING
    return Filter.parse(f.character_ids, f.name_prefix, field="filter")


def _window(stream: grpclib.server.Stream[Any, Any]) -> int:
    raw = stream._stream
    assert raw.id is not None
    return int(raw._h2_connection.local_flow_control_window(raw.id))


async def _send(stream: grpclib.server.Stream[Any, Any], session: Session, data: bytes) -> bool:
    """Send one message once the window takes it whole; False when the session was closed
    (evicted) while waiting."""
    need = min(len(data) + 5, _MAX_WHOLE)
    raw = stream._stream
    while raw.id is not None and _window(stream) < need:
        if session.closed is not None:
            return False
        raw.window_updated.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(raw.window_updated.wait(), WINDOW_POLL_SECONDS)
    await stream.send_message(data)
    return True


async def _end(stream: grpclib.server.Stream[Any, Any], session: Session) -> None:
    cursor = session.resume
    if session.closed == EVICTED:
        status = Status.RESOURCE_EXHAUSTED
        text = f"too slow to keep up: resume with after_cursor={cursor}"
    else:
        status = Status.UNAVAILABLE
        text = f"marveld is shutting down: resume with after_cursor={cursor}"
    await stream.send_trailing_metadata(
        status=status, status_message=text, metadata={RESUME_TRAILER: str(cursor)}
    )


async def _stream(stream: grpclib.server.Stream[Any, Any], session: Session, beat: float) -> None:
    wake = asyncio.Event()
    session.wake_with(wake.set)
    while not session.caught_up:
        page = await trio_asyncio.trio_as_aio(session.replay)()
        for note in page:
            if not await _send(stream, session, encode(note)):
                return await _end(stream, session)
            session.sent(note)
        session.replayed()
    while True:
        if session.closed is not None:
            return await _end(stream, session)
        wake.clear()
        note = session.next_nowait()
        if note is not None:
            if not await _send(stream, session, encode(note)):
                return await _end(stream, session)
            session.sent(note)
            continue
        if session.closed is not None:
            continue
        try:
            await asyncio.wait_for(wake.wait(), beat)
        except TimeoutError:
            if not await _send(stream, session, heartbeat(session.heartbeat_cursor())):
                return await _end(stream, session)


def notification_service(service: NotificationService) -> Service:
    async def open_session(request: pb.SubscribeRequest, ctx: CallContext) -> Session:
        after = request.after_cursor
        return await service.open(ctx.authorization, after, _filter(request), channel=CHANNEL)

    subscribe_request = wire.Request(pb.SubscribeRequest)

    async def subscribe(stream: grpclib.server.Stream[Any, Any]) -> None:
        request = await subscribe_request.receive(stream)
        ctx = context_of(stream)
        session, error = await trio_asyncio.trio_as_aio(_call_in_trio)(
            open_session, request, ctx, OPEN_SECONDS
        )
        if error is not None:
            await wire.refuse(stream, error)
            return
        try:
            await _stream(stream, session, service.settings.heartbeat)
        finally:
            session.close()

    async def list_notifications(request: pb.ListNotificationsRequest, ctx: CallContext) -> bytes:
        result = await service.list(ctx.authorization, request.after_cursor, request.limit)
        reply = _UPB_LIST(next_cursor=result.next_cursor)
        for note in result.notifications:
            fill(reply.notifications.add(), note)
        return bytes(reply.SerializeToString())

    def subscription_reply(value: Filter) -> pb.Subscription:
        return pb.Subscription(
            filter=pb.NotificationFilter(
                character_ids=sorted(value.character_ids), name_prefix=value.name_prefix
            )
        )

    async def get_subscription(
        request: pb.GetSubscriptionRequest, ctx: CallContext
    ) -> pb.Subscription:
        return subscription_reply(await service.subscription(ctx.authorization))

    async def update_subscription(request: pb.Subscription, ctx: CallContext) -> pb.Subscription:
        f = request.filter or pb.NotificationFilter()
        value = await service.subscribe_to(ctx.authorization, f.character_ids, f.name_prefix)
        return subscription_reply(value)

    return Service(
        f"{PACKAGE}.NotificationService",
        {
            "Subscribe": grpclib.const.Handler(
                subscribe,
                grpclib.const.Cardinality.UNARY_STREAM,
                pb.SubscribeRequest,
                pb.Notification,
            ),
            "ListNotifications": unary(
                list_notifications, pb.ListNotificationsRequest, pb.ListNotificationsResponse
            ),
            "GetSubscription": unary(get_subscription, pb.GetSubscriptionRequest, pb.Subscription),
            "UpdateSubscription": unary(update_subscription, pb.Subscription, pb.Subscription),
        },
    )
