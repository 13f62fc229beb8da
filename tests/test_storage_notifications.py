"""Storage: subscriptions, the notification saga over the event log, pages by cursor,
retention, ``sent_at``; and webhook deliveries. On both backends (the ``store`` fixture).

Events come from the public repos (``store.changes.apply``), as the sync service makes
them; fixed timestamps are passed in, as the services pass theirs.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from marveld.domain.changes import CHARACTER_ADDED, CHARACTER_UPDATED, Provenance
from marveld.domain.characters import Character
from marveld.domain.notifications import Filter, Notification
from marveld.domain.users import User
from marveld.storage import Store
from marveld.storage.codec import text_to_time
from marveld.storage.notifications import FLOOR, POSITION
from marveld.storage.notifications_base import Feed
from marveld.storage.webhooks import KEEP_APPLIED
from tests.stores import rows
from tests.test_storage import T0, character

POLL = Provenance(source="poll", correlation_id="poll:run-1", causation_id="poll:run-1")
BOOTSTRAP = Provenance(source="bootstrap", correlation_id="bootstrap:run-0")
LATER = T0 + timedelta(minutes=1)
STEP = 500


def as_time(value: Any) -> datetime | None:
    """A stored time as an aware UTC datetime, whichever the backend (text or timestamptz)."""
    if value is None:
        return None
    if isinstance(value, str):
        return text_to_time(value)
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


async def user(store: Store, name: str, now: datetime = T0) -> User:
    return await store.users.create(
        name=name, email=f"{name.lower()}@example.com", password_hash="h", now=now
    )


async def apply(
    store: Store, *characters: Character, now: datetime = LATER, provenance: Provenance = POLL
) -> list[int]:
    """Apply a batch as a sync would; returns the seqs of the events it appended."""
    result = await store.changes.apply(list(characters), provenance=provenance, now=now)
    return [e.seq for e in result.events if e.seq is not None]


def by_recipient(notes: tuple[Notification, ...]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for note in notes:
        out.setdefault(note.recipient_id, []).append(note.cursor)
    return {k: sorted(v) for k, v in out.items()}


# --- subscriptions ---------------------------------------------------------------------------


async def test_subscriptions_are_set_read_replaced_and_cleared(store: Store) -> None:
    ann = await user(store, "Ann")
    assert await store.notifications.subscription(ann.id) == Filter()
    assert await store.notifications.subscription("no-such-user") == Filter()
    wanted = Filter(frozenset({1011334, 3, 2**40}), "spider")
    await store.notifications.set_subscription(ann.id, wanted, T0)
    assert await store.notifications.subscription(ann.id) == wanted
    replaced = Filter(frozenset(), "iron")
    await store.notifications.set_subscription(ann.id, replaced, LATER)
    assert await store.notifications.subscription(ann.id) == replaced
    stored = await rows(store, "SELECT updated_at FROM notification_subscriptions")
    assert [as_time(r[0]) for r in stored] == [LATER]
    # Everything is no row at all.
    await store.notifications.set_subscription(ann.id, Filter(), LATER)
    assert await store.notifications.subscription(ann.id) == Filter()
    assert await rows(store, "SELECT user_id FROM notification_subscriptions") == []


async def test_the_saga_notifies_the_users_whose_filter_matches(store: Store) -> None:
    ann = await user(store, "Ann")  # everything
    bob = await user(store, "Bob")  # character 2 only
    cat = await user(store, "Cat")  # names starting with "spi"
    dan = await user(store, "Dan")  # deleted: nobody
    await user(store, "Eve", now=LATER + timedelta(seconds=1))  # came after the events
    await store.notifications.set_subscription(bob.id, Filter(frozenset({2})), T0)
    await store.notifications.set_subscription(cat.id, Filter(name_prefix="spi"), T0)
    await store.users.soft_delete(dan.id, T0)
    spider, iron = character(1, name="Spider-Man"), character(2, name="Iron Man")
    assert await apply(store, spider, iron) == [1, 2]
    assert await store.notifications.pending()

    step = await store.notifications.step(LATER, limit=STEP)

    assert (step.position, step.events) == (2, 2)
    assert by_recipient(step.notifications) == {ann.id: [1, 2], bob.id: [2], cat.id: [1]}
    assert not await store.notifications.pending()
    assert await store.notifications.positions() == (2, 0)
    first = next(n for n in step.notifications if n.recipient_id == ann.id and n.cursor == 1)
    events = await rows(store, "SELECT id, created_at FROM events WHERE seq = 1")
    assert first == Notification(
        id=first.id,
        cursor=1,
        recipient_id=ann.id,
        type=CHARACTER_ADDED,
        message="Spider-Man was added",
        event_id=events[0][0],
        correlation_id="poll:run-1",
        occurred_at=spider.modified or LATER,
        created_at=LATER,
        marvel_id=1,
        name="Spider-Man",
        character=spider.to_json(),
        committed_at=as_time(events[0][1]),
    )
    stored = await rows(
        store, "SELECT recipient_id, cursor, event_seq, created_at, sent_at FROM notifications"
    )
    assert sorted((r[0], r[1], r[2], as_time(r[3]), r[4]) for r in stored) == sorted(
        (n.recipient_id, n.cursor, n.cursor, LATER, None) for n in step.notifications
    )


async def test_each_notification_holds_the_character_as_of_its_event(store: Store) -> None:
    ann = await user(store, "Ann")
    v1 = character(7, name="Hulk", description="green")
    v2 = character(7, name="Hulk", description="grey")
    v3 = character(7, name="Hulk", description="red")
    await apply(store, v1)
    await apply(store, v2, now=LATER + timedelta(seconds=1))
    await apply(store, v3, now=LATER + timedelta(seconds=2))

    step = await store.notifications.step(LATER + timedelta(seconds=3), limit=STEP)

    notes = sorted(step.notifications, key=lambda n: n.cursor)
    assert [(n.cursor, n.type, n.message) for n in notes] == [
        (1, CHARACTER_ADDED, "Hulk was added"),
        (2, CHARACTER_UPDATED, "Hulk was updated (description)"),
        (3, CHARACTER_UPDATED, "Hulk was updated (description)"),
    ]
    assert [n.character for n in notes] == [v1.to_json(), v2.to_json(), v3.to_json()]
    page = await store.notifications.page(ann.id, after=0, limit=10)
    assert page.notifications == tuple(notes)


async def test_silent_events_notify_nobody_but_move_the_position(store: Store) -> None:
    await user(store, "Ann")
    await apply(store, character(1), character(2), provenance=BOOTSTRAP)
    step = await store.notifications.step(LATER, limit=STEP)
    assert (step.position, step.events, step.notifications) == (2, 2, ())
    assert await rows(store, "SELECT id FROM notifications") == []
    assert await rows(store, "SELECT event_seq FROM notification_characters") == []


async def test_a_step_reads_at_most_limit_events_and_goes_on_from_its_position(
    store: Store,
) -> None:
    ann = await user(store, "Ann")
    await apply(store, *(character(i) for i in range(1, 6)))
    steps = [await store.notifications.step(LATER, limit=2) for _ in range(4)]
    assert [(s.position, s.events) for s in steps] == [(2, 2), (4, 2), (5, 1), (5, 0)]
    assert [by_recipient(s.notifications) for s in steps] == [
        {ann.id: [1, 2]},
        {ann.id: [3, 4]},
        {ann.id: [5]},
        {},
    ]
    assert await store.sync_state.get(POSITION) == 5


async def test_re_running_the_saga_over_the_same_events_changes_nothing(store: Store) -> None:
    ann = await user(store, "Ann")
    await apply(store, character(1), character(2))
    await store.notifications.step(LATER, limit=STEP)
    before = await store.notifications.page(ann.id, after=0, limit=10)
    characters = await rows(store, "SELECT event_seq, character FROM notification_characters")
    # A crash after the notifications were written but before the position moved is the
    # same as moving the position back: the step runs over those events again.
    await store.sync_state.put({POSITION: 0}, LATER)
    again = await store.notifications.step(LATER + timedelta(hours=1), limit=STEP)
    assert (again.position, again.events) == (2, 2)
    after = await store.notifications.page(ann.id, after=0, limit=10)
    assert after.notifications == before.notifications
    assert len(await rows(store, "SELECT id FROM notifications")) == 2
    assert (
        await rows(store, "SELECT event_seq, character FROM notification_characters") == characters
    )


async def test_parallel_steps_notify_each_event_once(store: Store) -> None:
    ann = await user(store, "Ann")
    for i in range(1, 13):
        await apply(store, character(i))
    published: list[int] = []

    async def stepper() -> None:
        while (step := await store.notifications.step(LATER, limit=3)).events:
            published.extend(n.cursor for n in step.notifications)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(stepper)
    assert sorted(published) == list(range(1, 13))
    page = await store.notifications.page(ann.id, after=0, limit=100)
    assert [n.cursor for n in page.notifications] == list(range(1, 13))


async def test_a_naive_time_is_refused_by_a_step_with_events(store: Store) -> None:
    await user(store, "Ann")
    naive = datetime(2026, 11, 24, 7)
    assert (await store.notifications.step(naive, limit=STEP)).events == 0  # nothing to write
    await apply(store, character(1))
    with pytest.raises(ValueError, match="aware"):
        await store.notifications.step(naive, limit=STEP)
    assert await store.notifications.positions() == (0, 0)
    assert await rows(store, "SELECT id FROM notifications") == []


# --- pages by cursor -------------------------------------------------------------------------


async def test_pages_follow_the_cursor_in_order_one_user_at_a_time(store: Store) -> None:
    ann = await user(store, "Ann")
    bob = await user(store, "Bob")
    await store.notifications.set_subscription(bob.id, Filter(frozenset({2, 4})), T0)
    await apply(store, *(character(i) for i in range(1, 6)))
    step = await store.notifications.step(LATER, limit=STEP)

    pages = [await store.notifications.page(ann.id, after=a, limit=2) for a in (0, 2, 4, 5)]
    assert [[n.cursor for n in p.notifications] for p in pages] == [[1, 2], [3, 4], [5], []]
    assert {(p.position, p.floor) for p in pages} == {(5, 0)}
    mine = tuple(sorted((n for n in step.notifications if n.recipient_id == ann.id), key=_cur))
    assert tuple(n for p in pages for n in p.notifications) == mine
    bobs = await store.notifications.page(bob.id, after=0, limit=10)
    assert [(n.cursor, n.recipient_id) for n in bobs.notifications] == [(2, bob.id), (4, bob.id)]
    assert (await store.notifications.page(bob.id, after=3, limit=10)).notifications == (
        bobs.notifications[1],
    )
    nobody = await store.notifications.page("no-such-user", after=0, limit=10)
    assert (nobody.notifications, nobody.position, nobody.floor) == ((), 5, 0)


def _cur(note: Notification) -> int:
    return note.cursor


async def test_the_feed_gives_every_users_notifications_in_whole_cursors(store: Store) -> None:
    """What a replica's feeder reads: all users' notifications after a cursor, about
    ``limit`` at a time but never half a cursor (each cursor here has 3 notifications)."""
    users = [await user(store, name) for name in ("Ann", "Bob", "Cid")]
    await apply(store, *(character(i) for i in range(1, 6)))
    step = await store.notifications.step(LATER, limit=STEP)
    assert len(step.notifications) == 15

    feeds, after = [], 0
    while True:
        feed = await store.notifications.feed(after=after, limit=7)
        feeds.append(([n.cursor for n in feed.notifications], feed.upto, feed.position))
        if feed.upto == feed.position:
            break
        after = feed.upto
    # 7 rows would cut cursor 3: two whole cursors (6 rows), then the same again, then one.
    assert feeds == [
        ([1, 1, 1, 2, 2, 2], 2, 5),
        ([3, 3, 3, 4, 4, 4], 4, 5),
        ([5, 5, 5], 5, 5),
    ]
    # A cursor with more notifications than the limit comes whole.
    whole = await store.notifications.feed(after=0, limit=2)
    assert ([n.cursor for n in whole.notifications], whole.upto) == ([1, 1, 1], 1)
    assert {n.recipient_id for n in whole.notifications} == {u.id for u in users}
    # Nothing past the saga's position.
    assert await store.notifications.feed(after=5, limit=7) == Feed((), 5, 5)


# --- retention -------------------------------------------------------------------------------


async def test_the_sweep_deletes_old_notifications_and_raises_the_floor(store: Store) -> None:
    ann = await user(store, "Ann")
    bob = await user(store, "Bob")
    await store.notifications.set_subscription(bob.id, Filter(frozenset({3})), T0)
    await apply(store, character(1), character(2))
    old = T0 + timedelta(hours=1)
    await store.notifications.step(old, limit=STEP)
    await apply(store, character(3), now=old + timedelta(minutes=1))
    new = T0 + timedelta(hours=3)
    await store.notifications.step(new, limit=STEP)

    assert await store.notifications.sweep(T0, new) == 0  # nothing that old
    assert await store.notifications.positions() == (3, 0)
    assert await store.notifications.sweep(T0 + timedelta(hours=2), new) == 2

    assert await store.notifications.positions() == (3, 2)
    page = await store.notifications.page(ann.id, after=0, limit=10)
    assert ([n.cursor for n in page.notifications], page.floor) == ([3], 2)
    assert [
        n.cursor for n in (await store.notifications.page(bob.id, after=0, limit=10)).notifications
    ] == [3]
    assert await rows(store, "SELECT event_seq FROM notification_characters") == [(3,)]
    assert await store.sync_state.get(FLOOR) == 2
    # A sweep with an older cut finds nothing and leaves the floor alone.
    assert await store.notifications.sweep(T0 + timedelta(hours=1), new) == 0
    assert await store.notifications.positions() == (3, 2)
    # Sweeping everything keeps the floor at the newest cursor deleted.
    assert await store.notifications.sweep(new + timedelta(seconds=1), new) == 2
    assert await store.notifications.positions() == (3, 3)
    assert await rows(store, "SELECT event_seq FROM notification_characters") == []


# --- sent_at ---------------------------------------------------------------------------------


async def test_mark_sent_records_the_first_time_only(store: Store) -> None:
    ann = await user(store, "Ann")
    await apply(store, character(1), character(2), character(3))
    await store.notifications.step(LATER, limit=STEP)
    notes = (await store.notifications.page(ann.id, after=0, limit=10)).notifications
    first, second = LATER + timedelta(seconds=5), LATER + timedelta(seconds=9)

    await store.notifications.mark_sent([], first)
    await store.notifications.mark_sent([notes[0].id], first)
    await store.notifications.mark_sent([notes[0].id, notes[1].id, "no-such-id"], second)

    sent = dict(await rows(store, "SELECT id, sent_at FROM notifications"))
    assert {k: as_time(v) for k, v in sent.items()} == {
        notes[0].id: first,
        notes[1].id: second,
        notes[2].id: None,
    }


# --- webhook deliveries ----------------------------------------------------------------------


async def test_a_delivery_is_recorded_once_and_pending_until_applied(store: Store) -> None:
    occurred = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
    assert await store.webhooks.record(
        "b-delivery", kind="character.updated", ids=[1, 2**40], occurred_at=occurred, now=T0
    )
    assert not await store.webhooks.record(
        "b-delivery", kind="character.updated", ids=[9], occurred_at=None, now=LATER
    )
    assert await store.webhooks.record(
        "a-delivery", kind="character.added", ids=[], occurred_at=None, now=T0
    )
    assert await store.webhooks.record(
        "B-delivery", kind="character.added", ids=[3], occurred_at=None, now=T0
    )
    assert await store.webhooks.record(
        "first", kind="character.added", ids=[4], occurred_at=None, now=T0 - timedelta(seconds=1)
    )

    pending = await store.webhooks.pending()
    # Oldest first, then by id byte for byte ("B" < "a" < "b").
    assert [d.id for d in pending] == ["first", "B-delivery", "a-delivery", "b-delivery"]
    recorded = pending[3]
    assert (recorded.type, recorded.ids, recorded.occurred_at, recorded.received_at) == (
        "character.updated",
        (1, 2**40),
        occurred,
        T0,
    )
    assert recorded.received_at.utcoffset() == timedelta(0)
    assert pending[2].ids == ()
    assert [d.id for d in await store.webhooks.pending(limit=2)] == ["first", "B-delivery"]

    await store.changes.apply(
        [character(1)],
        provenance=Provenance("webhook", "webhook:b-delivery", "b-delivery"),
        now=LATER,
        delivery_id="b-delivery",
    )
    assert [d.id for d in await store.webhooks.pending()] == ["first", "B-delivery", "a-delivery"]
    applied = await rows(
        store, "SELECT applied_at FROM webhook_deliveries WHERE id = ?", "b-delivery"
    )
    assert [as_time(r[0]) for r in applied] == [LATER]
    # Still remembered: the same delivery again is a duplicate.
    assert not await store.webhooks.record(
        "b-delivery", kind="character.updated", ids=[1], occurred_at=None, now=LATER
    )


async def test_applied_deliveries_are_forgotten_after_a_day(store: Store) -> None:
    await store.webhooks.record("old", kind="character.added", ids=[1], occurred_at=None, now=T0)
    await store.webhooks.record("kept", kind="character.added", ids=[2], occurred_at=None, now=T0)
    await store.changes.apply(
        [character(1)], provenance=Provenance("webhook", "webhook:old"), now=T0, delivery_id="old"
    )
    # Within the day an applied delivery is still a duplicate; past it, it is forgotten.
    soon = T0 + KEEP_APPLIED
    assert not await store.webhooks.record(
        "old", kind="character.added", ids=[1], occurred_at=None, now=soon
    )
    past = T0 + KEEP_APPLIED + timedelta(microseconds=1)
    assert await store.webhooks.record(
        "new", kind="character.added", ids=[3], occurred_at=None, now=past
    )
    remaining = await rows(store, "SELECT id FROM webhook_deliveries ORDER BY id")
    assert remaining == [("kept",), ("new",)]  # a pending one is never forgotten
    assert [d.id for d in await store.webhooks.pending()] == ["kept", "new"]
