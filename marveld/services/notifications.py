"""Notifications: the saga over the event log, live sessions, polling, retention.

- **Saga** (:meth:`NotificationService.run`): woken at once by :meth:`poke` (the sync
  service calls it after each commit that appended events; a slow re-check every
  ``RECHECK_SECONDS`` is a safety net), it runs ``store.notifications.step`` until the log is
  read: notifications and the position in one transaction, then published to the broker.
- **Sessions** (:class:`Session`): one per gRPC stream or WebSocket. With a cursor, the
  backlog is replayed page by page from SQLite; when a page comes back short the session
  subscribes to the broker and reads once more, so nothing committed in between is
  missed, and live items at or below the last replayed cursor are skipped (no duplicate).
- ``sent_at`` is recorded in batches (:meth:`delivered`), every ``SENT_FLUSH_SECONDS``.
- **Replicas** (PostgreSQL, ``shared``): every replica runs the saga (its steps take a lock:
  each event is turned into notifications once for the cluster), but none publishes what
  its step wrote; a feeder on each replica reads, by cursor, what any saga wrote (woken by
  its own saga and by the others' signals) and publishes it, so every replica's
  subscribers get every notification in cursor order.
- A sweeper (the leader's duty) deletes notifications older than the retention; resuming
  below the floor it leaves is ``CursorExpired`` (FAILED_PRECONDITION).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import trio

from marveld.domain.errors import CursorExpired, InvalidArgument, ShuttingDown
from marveld.domain.notifications import EVERYTHING, Filter, Notification
from marveld.metrics import Metrics
from marveld.services.broker import Broker, Subscriber
from marveld.services.users import UserService
from marveld.storage import StorageError, Store

log = logging.getLogger(__name__)

STEP_EVENTS: Final = 500  # events per saga transaction
FEED_ROWS: Final = 5000  # notifications the feeder reads at once (whole cursors)
RECHECK_SECONDS: Final = 5.0
SENT_FLUSH_SECONDS: Final = 1.0
REPLAY_PAGE: Final = 500
LIST_DEFAULT: Final = 100
LIST_MAX: Final = 1000
MAX_CURSOR: Final = 2**63 - 1  # cursors are int64 on the wire and in SQLite


@dataclass(frozen=True, slots=True)
class NotificationSettings:
    queue_size: int = 256
    heartbeat: float = 15.0
    retention: float = 7 * 86400.0
    sweep_interval: float = 3600.0


@dataclass(frozen=True, slots=True)
class ListResult:
    notifications: tuple[Notification, ...]
    next_cursor: int


class Session:
    """One live stream of one user. Drive it with :meth:`replay` until it says it is
    caught up, then take live items with :meth:`next_nowait`, woken by :meth:`wake_with`."""

    def __init__(
        self,
        service: NotificationService,
        user_id: str,
        after: int | None,
        stream_filter: Filter,
        channel: str,
    ) -> None:
        self._service = service
        self.user_id = user_id
        self.channel = channel
        self.filter = stream_filter
        # last: the newest cursor read (live items at or below it are skipped); resume: the
        # newest cursor the client has everything up to (what it is told to resume from).
        self.last = after if after is not None else service.broker.position
        self.resume = self.last
        self._replaying = after is not None
        self._wake: Callable[[], None] | None = None
        self.sub: Subscriber | None = None
        if after is None:
            self._subscribe()

    def _subscribe(self) -> None:
        self.sub = self._service.broker.subscribe(self.user_id, self.channel, self.filter)
        if self._wake is not None:
            self.sub.wake = self._wake

    @property
    def caught_up(self) -> bool:
        return not self._replaying

    async def replay(self) -> list[Notification]:
        """The next page of the backlog (trio); an empty list once caught up."""
        if not self._replaying:
            return []
        out: list[Notification] = []
        while True:
            page = await self._service.store.notifications.page(
                self.user_id, after=self.last, limit=REPLAY_PAGE
            )
            notes = page.notifications
            if notes:
                self.last = notes[-1].cursor
                out.extend(n for n in notes if self.filter.matches(n.marvel_id, n.name))
            if len(notes) == REPLAY_PAGE:
                if out:
                    return out
                continue
            if self.sub is None:
                # Subscribe, then read once more: what was committed between the last read
                # and now is in that read; later items come live, those ≤ last skipped.
                self._subscribe()
                self.last = max(self.last, min(page.position, self._service.broker.position))
                continue
            self._replaying = False
            return out

    def take(self, note: Notification | None) -> Notification | None:
        """A live item, or None for one already replayed."""
        if note is None or note.cursor <= self.last:
            return None
        return note

    def next_nowait(self) -> Notification | None:
        """The next live item without waiting (synchronous: asyncio code may call it)."""
        assert self.sub is not None
        while (note := self.sub.next_nowait()) is not None:
            if self.take(note) is not None:
                return note
        return None

    @property
    def closed(self) -> str | None:
        return None if self.sub is None else self.sub.closed

    def sent(self, note: Notification) -> None:
        """``note`` went out (synchronous)."""
        self.last = max(self.last, note.cursor)
        self.resume = max(self.resume, note.cursor)
        self._service.delivered(note, self.channel)

    def replayed(self) -> None:
        """The page :meth:`replay` returned went out, all of it."""
        self.resume = max(self.resume, self.last)

    def heartbeat_cursor(self) -> int:
        """Where a client may resume from without missing anything."""
        if self.sub is not None and not self._replaying and self.sub.backlog == 0:
            self.resume = max(self.resume, self._service.broker.position)
        return self.resume

    def wake_with(self, callback: Callable[[], None]) -> None:
        """``callback()`` (synchronous) when a live item arrives or the stream is closed."""
        self._wake = callback
        if self.sub is not None:
            self.sub.wake = callback

    def close(self) -> None:
        if self.sub is not None:
            self._service.broker.unsubscribe(self.sub)


class NotificationService:
    def __init__(
        self,
        store: Store,
        users: UserService,
        metrics: Metrics,
        clock: Callable[[], datetime],
        settings: NotificationSettings | None = None,
        *,
        shared: bool = False,
    ) -> None:
        """``shared``: other replicas' sagas may write notifications too (PostgreSQL), so
        the broker is fed from the database (:meth:`feed`), not by this saga alone."""
        self.store = store
        self.settings = settings or NotificationSettings()
        self.broker = Broker(metrics, queue_size=self.settings.queue_size)
        self._users = users
        self._metrics = metrics
        self._clock = clock
        self._shared = shared
        self._poked = trio.Event()
        self._fed = trio.Event()
        self._unsent: list[str] = []

    # --- the saga -----------------------------------------------------------------------------

    def poke(self, *_: object) -> None:
        """Wake the saga: events were committed (synchronous, from trio code)."""
        self._poked.set()

    def heard(self, position: int) -> None:
        """Another replica's saga reached ``position``: feed the broker up to it."""
        if position > self.broker.position:
            self._fed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The saga, the feeder (with replicas) and the ``sent_at`` flusher."""
        position, _ = await self.store.notifications.positions()
        self.broker.position = position
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._flush_forever)
                if self._shared:
                    nursery.start_soon(self._feed_forever)
                task_status.started()
                await self._saga()
        finally:
            self.broker.close_all()
            with trio.move_on_after(2, shield=True):
                await self.flush()

    async def _saga(self) -> None:
        while True:
            self._poked = trio.Event()
            try:
                read = await self.step()
            except StorageError as exc:
                log.warning("notifier step failed, retrying: %s", exc)
                await trio.sleep(1)
                continue
            if read == STEP_EVENTS:
                continue
            with trio.move_on_after(RECHECK_SECONDS):
                await self._poked.wait()

    async def step(self) -> int:
        """One saga step; returns how many events it read."""
        step = await self.store.notifications.step(self._clock(), limit=STEP_EVENTS)
        for note in step.notifications:
            self._metrics.notifications_created.labels(type=note.type).inc()
        if self._shared:
            self._fed.set()  # the feeder publishes it, in cursor order with the others'
        else:
            self.broker.publish(step.notifications, step.position)
        if step.notifications:
            log.debug("%d notification(s) up to cursor %d", len(step.notifications), step.position)
        return step.events

    # --- delivery bookkeeping -------------------------------------------------------------------

    def delivered(self, note: Notification, channel: str) -> None:
        self._metrics.notifications_delivered.labels(channel=channel).inc()
        if channel != "polling" and note.committed_at is not None:
            lag = (self._clock() - note.committed_at).total_seconds()
            self._metrics.notification_lag.observe(max(0.0, lag))
        self._unsent.append(note.id)

    async def flush(self) -> None:
        ids, self._unsent = self._unsent, []
        if ids:
            await self.store.notifications.mark_sent(ids, self._clock())

    async def _flush_forever(self) -> None:
        while True:
            await trio.sleep(SENT_FLUSH_SECONDS)
            try:
                await self.flush()
            except StorageError as exc:
                log.warning("recording sent_at failed: %s", exc)

    # --- the feeder (replicas) ------------------------------------------------------------------

    async def _feed_forever(self) -> None:
        """Publish what any replica's saga wrote, in cursor order, woken by this saga, by
        another replica's signal (:meth:`heard`) or, at the latest, every RECHECK_SECONDS."""
        while True:
            self._fed = trio.Event()
            try:
                more = await self.feed()
            except StorageError as exc:
                log.warning("reading new notifications failed, retrying: %s", exc)
                await trio.sleep(1)
                continue
            if more:
                continue
            with trio.move_on_after(RECHECK_SECONDS):
                await self._fed.wait()

    async def feed(self) -> bool:
        """Publish the next notifications past the broker's position; whether more wait."""
        batch = await self.store.notifications.feed(after=self.broker.position, limit=FEED_ROWS)
        self.broker.publish(batch.notifications, batch.upto)
        return batch.upto < batch.position

    # --- retention (the leader's duty) ----------------------------------------------------------

    async def sweeps(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Delete notifications past their retention: now, then every ``sweep_interval``."""
        task_status.started()
        while True:
            await self.sweep()
            await trio.sleep(self.settings.sweep_interval)

    async def sweep(self) -> int:
        now = self._clock()
        gone = await self.store.notifications.sweep(
            now - timedelta(seconds=self.settings.retention), now
        )
        if gone:
            log.info("retention: %d notification(s) deleted", gone)
        return gone

    # --- what the faces call ----------------------------------------------------------------------

    async def _check_cursor(self, after: int) -> None:
        if not 0 <= after <= MAX_CURSOR:
            raise InvalidArgument("after_cursor", f"must be an integer from 0 to {MAX_CURSOR}")
        _, floor = await self.store.notifications.positions()
        if 0 < after < floor:
            raise CursorExpired(after, floor)

    async def open(
        self,
        authorization: str | None,
        after: int | None,
        stream_filter: Filter = EVERYTHING,
        *,
        channel: str,
    ) -> Session:
        """A session for a live stream: authenticated and rate-limited like any call;
        ShuttingDown once the channel's streams have been ended (:meth:`end_streams`)."""
        if self.broker.shut(channel):
            raise ShuttingDown()
        user = await self._users.authenticate(authorization)
        if after is not None:
            await self._check_cursor(after)
        return Session(self, user.id, after, stream_filter, channel)

    async def list(self, authorization: str | None, after: int, limit: int | None) -> ListResult:
        user = await self._users.authenticate(authorization)
        size = LIST_DEFAULT if limit is None else limit
        if not 1 <= size <= LIST_MAX:
            raise InvalidArgument("limit", f"must be 1 to {LIST_MAX}")
        await self._check_cursor(after)
        page = await self.store.notifications.page(user.id, after=after, limit=size)
        notes = page.notifications
        for note in notes:
            self.delivered(note, "polling")
        if len(notes) == size:
            return ListResult(notes, notes[-1].cursor)
        return ListResult(notes, max(after, page.position, *(n.cursor for n in notes)))

    async def subscription(self, authorization: str | None) -> Filter:
        user = await self._users.authenticate(authorization)
        return await self.store.notifications.subscription(user.id)

    async def subscribe_to(
        self, authorization: str | None, character_ids: Iterable[int], name_prefix: str
    ) -> Filter:
        user = await self._users.authenticate(authorization)
        value = Filter.parse(character_ids, name_prefix, field="filter")
        await self.store.notifications.set_subscription(user.id, value, self._clock())
        return value

    async def end_streams(self, channel: str, grace: float) -> None:
        """Close the channel's live streams (shutdown) and wait, up to ``grace`` seconds,
        for their handlers to end them. A stream asked for later is refused (ShuttingDown:
        UNAVAILABLE, 503), to be asked of another replica."""
        self.broker.close_all(channel=channel)
        with trio.move_on_after(grace):
            while self.broker.count(channel):  # noqa: ASYNC110 - bounded, at shutdown only
                await trio.sleep(0.01)
