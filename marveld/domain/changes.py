"""The one diff every upstream path goes through, and the events it yields.

Bootstrap, poll, webhook and read-through all compare what the upstream sent with what
marveld holds: a new id is a ``CharacterAdded``, changed content (by
:meth:`~marveld.domain.characters.Character.content_hash`, not only ``modified``) is a
``CharacterUpdated`` listing the changed fields with their old and new values, identical
content is nothing. Data older than what marveld holds (an earlier ``modified``) is stale
and is nothing too, so a late answer never reverts a newer change.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from marveld.domain.characters import Character

CHARACTER_ADDED: Final = "CharacterAdded"
CHARACTER_UPDATED: Final = "CharacterUpdated"
EVENT_TYPES: Final = (CHARACTER_ADDED, CHARACTER_UPDATED)


def stream_id(marvel_id: int) -> str:
    """The event stream of one character: ``character-1009610``."""
    return f"character-{marvel_id}"


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a batch of upstream data comes from.

    ``correlation_id`` groups everything one sync run or webhook delivery caused
    (``poll:<run>``, ``bootstrap:<run>``, ``webhook:<delivery>``, ``read-through:<key>``);
    ``causation_id`` is the run, delivery or event that caused the batch. ``source`` names
    the path for metrics: bootstrap, poll, webhook, read_through.
    """

    source: str
    correlation_id: str
    causation_id: str | None = None

    @property
    def bulk(self) -> bool:
        """A bulk import (the first full sync): its events notify nobody."""
        return self.source == "bootstrap"


@dataclass(frozen=True, slots=True)
class Change:
    """What the diff found for one character. ``previous`` is None for an addition."""

    current: Character
    previous: Character | None
    fields: tuple[str, ...] = ()

    @property
    def added(self) -> bool:
        return self.previous is None


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the append-only log; ``seq`` is assigned by the store on append."""

    id: str
    stream_id: str
    type: str
    correlation_id: str
    causation_id: str | None
    occurred_at: datetime
    created_at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)
    seq: int | None = None


def diff(previous: Character | None, current: Character) -> Change | None:
    """The change from ``previous`` (None: never seen) to ``current``, or None for none."""
    if previous is None:
        return Change(current=current, previous=None)
    if previous.content_hash() == current.content_hash():
        return None
    old_time, new_time = previous.modified, current.modified
    if old_time is not None and new_time is not None and new_time < old_time:
        return None  # stale: an answer older than what is held
    old, new = previous.to_json(), current.to_json()
    fields = tuple(name for name in new if old.get(name) != new[name])
    return Change(current=current, previous=previous, fields=fields)


def event_for(
    change: Change,
    provenance: Provenance,
    now: datetime,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> Event:
    """The event recording ``change``. ``occurred_at`` is the upstream's ``modified``, or
    ``now`` when that is a placeholder such as ``-0001-11-30T00:00:00-0500``."""
    character = change.current
    data: dict[str, Any]
    if change.previous is None:
        kind = CHARACTER_ADDED
        data = {"marvel_id": character.id, "name": character.name, "character": character.to_json()}
    else:
        kind = CHARACTER_UPDATED
        old, new = change.previous.to_json(), character.to_json()
        data = {
            "marvel_id": character.id,
            "name": character.name,
            "fields": list(change.fields),
            "changes": {name: new[name] for name in change.fields},
            "previous": {name: old[name] for name in change.fields},
        }
    return Event(
        id=new_id(),
        stream_id=stream_id(character.id),
        type=kind,
        correlation_id=provenance.correlation_id,
        causation_id=provenance.causation_id,
        occurred_at=character.modified or now,
        created_at=now,
        data=data,
    )


def project(current: Mapping[str, Any] | None, event: Event) -> dict[str, Any]:
    """The read model's JSON for a character after ``event`` (``current``: before it).

    The projection reads the event only: an addition carries the whole character, an
    update the new values of the fields it changed.
    """
    if event.type == CHARACTER_ADDED:
        return dict(event.data["character"])
    if event.type == CHARACTER_UPDATED:
        if current is None:
            raise ValueError(f"{event.stream_id}: an update to a character never added")
        return {**current, **event.data["changes"]}
    raise ValueError(f"unknown event type {event.type!r}")
