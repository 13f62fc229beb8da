"""In-memory fan-out of new notifications to live subscribers (gRPC streams, WebSockets).

Each subscriber has a bounded queue: a plain deque, not a trio memory channel, which
costs ~2 KiB more per idle subscriber (its state, two channel objects; measured with
tracemalloc, 1,000 idle WebSockets) for what nobody uses here (waiting tasks). Publishing
never waits: an item that does not fit closes that subscriber as ``evicted`` (it resumes
from its cursor; nothing is lost, everything is in SQLite), so a slow consumer never slows
the others nor grows memory. Everything here is synchronous: the saga publishes from trio;
readers (a gRPC handler on the asyncio side, the WebSocket handler) take items with
:meth:`Subscriber.next_nowait` and are woken by a callback.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from marveld.domain.notifications import EVERYTHING, Filter, Notification
from marveld.metrics import Metrics

log = logging.getLogger(__name__)

EVICTED: Final = "evicted"
SHUTDOWN: Final = "shutdown"


def _nothing() -> None:
    return None


class Subscriber:
    """One live stream of one user: a bounded queue, a filter, and why it was closed."""

    def __init__(
        self, user_id: str, channel: str, size: int, stream_filter: Filter = EVERYTHING
    ) -> None:
        self.user_id = user_id
        self.channel = channel
        self.filter = stream_filter
        self._size = size
        self._queue: deque[Notification] = deque()
        self.closed: str | None = None
        # Called (synchronously) when an item arrives or the subscriber is closed.
        self.wake: Callable[[], None] = _nothing

    def offer(self, note: Notification) -> bool:
        """Queue ``note`` if it matches the stream's filter; False when the queue is full
        (the subscriber is then closed as evicted)."""
        if self.closed is not None:
            return True
        if not self.filter.matches(note.marvel_id, note.name):
            return True
        if len(self._queue) >= self._size:
            self.close(EVICTED)
            return False
        self._queue.append(note)
        self.wake()
        return True

    def next_nowait(self) -> Notification | None:
        """The next queued notification (what was queued before a close included), or
        None when there is none (yet)."""
        return self._queue.popleft() if self._queue else None

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
            self.wake()


class Broker:
    """Subscribers by user; ``position`` is the newest cursor published (the saga's)."""

    def __init__(self, metrics: Metrics, *, queue_size: int) -> None:
        self._metrics = metrics
        self.queue_size = queue_size
        self._by_user: dict[str, set[Subscriber]] = {}
        self.position = 0
        self._shut: set[str] = set()  # channels closed for a stop (close_all)
        self._shut_all = False

    def shut(self, channel: str) -> bool:
        """True once ``channel`` has been closed for a stop: no stream of it is served."""
        return self._shut_all or channel in self._shut

    def subscribe(
        self, user_id: str, channel: str, stream_filter: Filter = EVERYTHING
    ) -> Subscriber:
        sub = Subscriber(user_id, channel, self.queue_size, stream_filter)
        self._by_user.setdefault(user_id, set()).add(sub)
        self._metrics.subscribers.labels(channel=channel).inc()
        if self.shut(channel):  # after close_all: it ends at once
            sub.close(SHUTDOWN)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self._by_user.get(sub.user_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._by_user[sub.user_id]
        sub.close(sub.closed or "gone")
        self._metrics.subscribers.labels(channel=sub.channel).dec()

    def publish(self, notes: Sequence[Notification], position: int) -> None:
        """Offer each note to its recipient's subscribers, then advance ``position``."""
        for note in notes:
            for sub in tuple(self._by_user.get(note.recipient_id, ())):
                if not sub.offer(note):
                    self._metrics.subscribers_evicted.labels(channel=sub.channel).inc()
                    log.info(
                        "%s subscriber of user %s evicted: its queue of %d is full",
                        sub.channel,
                        sub.user_id,
                        self.queue_size,
                    )
        self.position = max(self.position, position)

    def count(self, channel: str | None = None) -> int:
        return sum(
            1
            for subs in self._by_user.values()
            for sub in subs
            if channel is None or sub.channel == channel
        )

    def close_all(self, reason: str = SHUTDOWN, channel: str | None = None) -> None:
        """Close every subscriber (of ``channel``); with SHUTDOWN, those that subscribe
        later too (a stream that was replaying its backlog subscribes once caught up)."""
        if reason == SHUTDOWN:
            if channel is None:
                self._shut_all = True
            else:
                self._shut.add(channel)
        for subs in tuple(self._by_user.values()):
            for sub in tuple(subs):
                if channel is None or sub.channel == channel:
                    sub.close(reason)
