"""Notifications as values, and the pure rules of the saga: who is notified of what.

- A notification reports one event to one user. Its **cursor is the event's ``seq``**: the
  log is already monotonic and gap-tolerant, a user has at most one notification per event
  (a unique index), and a position the notifier reached (a heartbeat's cursor) is a valid
  place to resume from even when nothing matched the user.
- **Silent events** notify nobody: the bulk import of the first sync (``bootstrap:<run>``),
  the catch-up of migration 2 (``migration:2``), and read-through additions made before the
  first sync completed (``read-through:<key>``: marveld could not tell new from unseen).
- A **filter** is everything (empty), a set of character ids, a name prefix, or both; a
  user's stored subscription is one, and a Subscribe stream may add its own on top.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from marveld.domain.changes import CHARACTER_ADDED, CHARACTER_UPDATED
from marveld.domain.errors import InvalidArgument
from marveld.domain.queries import MAX_CHARACTER_ID, fold_name
from marveld.domain.text import check_unicode

MAX_FILTER_IDS: Final = 1000
MAX_PREFIX_CHARS: Final = 100
SILENT_PREFIXES: Final = ("bootstrap:", "migration:")
READ_THROUGH_PREFIX: Final = "read-through:"


@dataclass(frozen=True, slots=True)
class Filter:
    """Empty: everything. Otherwise a character must be among ``character_ids`` (when
    given) and its folded name start with ``name_prefix`` (when given)."""

    character_ids: frozenset[int] = frozenset()
    name_prefix: str = ""  # folded

    @classmethod
    def parse(cls, character_ids: Iterable[int], name_prefix: str, *, field: str) -> Filter:
        ids = frozenset(int(i) for i in character_ids)
        if any(not 1 <= i <= MAX_CHARACTER_ID for i in ids):
            raise InvalidArgument(
                f"{field}.character_ids", f"must be Marvel character ids, 1 to {MAX_CHARACTER_ID}"
            )
        if len(ids) > MAX_FILTER_IDS:
            raise InvalidArgument(f"{field}.character_ids", f"at most {MAX_FILTER_IDS} ids")
        check_unicode(name_prefix, f"{field}.name_prefix")
        if len(name_prefix) > MAX_PREFIX_CHARS:
            raise InvalidArgument(f"{field}.name_prefix", f"at most {MAX_PREFIX_CHARS} characters")
        return cls(ids, fold_name(name_prefix) if name_prefix.strip() else "")

    @property
    def everything(self) -> bool:
        return not self.character_ids and not self.name_prefix

    def matches(self, marvel_id: int, name: str) -> bool:
        if self.character_ids and marvel_id not in self.character_ids:
            return False
        return not self.name_prefix or fold_name(name).startswith(self.name_prefix)


EVERYTHING: Final = Filter()


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification of one user. ``character`` is the character's JSON as of the
    event (``Character.to_json``)."""

    id: str
    cursor: int
    recipient_id: str
    type: str  # the event type: CharacterAdded, CharacterUpdated
    message: str
    event_id: str
    correlation_id: str
    occurred_at: datetime
    created_at: datetime
    marvel_id: int
    name: str
    character: Mapping[str, Any] = field(default_factory=dict)
    committed_at: datetime | None = None  # the event's, for the delivery lag


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """An event of the log as the saga reads it."""

    seq: int
    id: str
    type: str
    correlation_id: str
    created_at: datetime
    occurred_at: datetime
    data: Mapping[str, Any]

    @property
    def marvel_id(self) -> int:
        return int(self.data["marvel_id"])

    @property
    def name(self) -> str:
        return str(self.data.get("name", ""))


def silent(event: LoggedEvent, first_sync_completed_at: datetime | None) -> bool:
    """Whether ``event`` notifies nobody (see the module docstring)."""
    cause = event.correlation_id or ""
    if event.type not in (CHARACTER_ADDED, CHARACTER_UPDATED):
        return True
    if cause.startswith(SILENT_PREFIXES):
        return True
    if cause.startswith(READ_THROUGH_PREFIX):
        return first_sync_completed_at is None or event.created_at < first_sync_completed_at
    return False


def message_for(event: LoggedEvent) -> str:
    if event.type == CHARACTER_ADDED:
        return f"{event.name} was added"
    fields = ", ".join(event.data.get("fields", ()))
    return f"{event.name} was updated ({fields})" if fields else f"{event.name} was updated"


@dataclass(frozen=True, slots=True)
class Recipient:
    user_id: str
    created_at: datetime
    filter: Filter = EVERYTHING


def recipients_of(event: LoggedEvent, users: Sequence[Recipient]) -> list[str]:
    """The users whose subscription matches ``event`` and who existed when it happened."""
    marvel_id, name = event.marvel_id, event.name
    return [
        u.user_id
        for u in users
        if u.created_at <= event.created_at and u.filter.matches(marvel_id, name)
    ]


def states_at(
    current: Mapping[int, Mapping[str, Any]], events_desc: Iterable[LoggedEvent]
) -> dict[int, dict[str, Any]]:
    """The character JSON right after each event, by seq, walking back from ``current``
    (the read model now, by marvel id) through ``events_desc`` (every event of those
    characters from the oldest wanted one to the newest, newest first): an update's
    ``previous`` values undo it."""
    state: dict[int, dict[str, Any] | None] = {k: dict(v) for k, v in current.items()}
    after: dict[int, dict[str, Any]] = {}
    for event in events_desc:
        now = state.get(event.marvel_id)
        if now is None and event.type == CHARACTER_ADDED:
            now = dict(event.data["character"])
        after[event.seq] = dict(now or {})
        if event.type == CHARACTER_ADDED:
            state[event.marvel_id] = None
        elif now is not None:
            state[event.marvel_id] = {**now, **event.data.get("previous", {})}
    return after
