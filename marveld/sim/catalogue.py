"""The characters the simulator serves: loading, Marvel's order, and the list filters.

Marvel's default order (no ``orderBy``), checked against all 40 recorded pages of the 2022
crawl: by name, case-insensitive (``str.lower``), comparing code points, so punctuation and
spaces sort by their code point (``"Iron Man"`` < ``"Iron Man (Ultimate)"`` <
``"Iron Man/Tony Stark (MAA)"`` < ``"Ironclad"``) and non-ASCII letters after ASCII ones.
Trailing spaces are kept (``"Karolina Dean "``). The one tie in the data, the two
``Jean Grey`` (1009327, 1009496), was served with the higher id first, so ties go by
descending id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from marveld.domain.characters import parse_marvel_time

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("id", "name", "modified")
APPEARANCE_LISTS = ("comics", "series", "events", "stories")
# Placeholders such as ``-0001-11-30T00:00:00-0500`` have no real time: they sort first.
BEFORE_EVERYTHING = datetime.min.replace(tzinfo=UTC)


class DatasetError(ValueError):
    """The dataset file is missing or not a JSON array of Marvel character objects."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One character, with what filtering and sorting need precomputed."""

    id: int
    name: str
    match_name: str  # casefolded, trailing spaces dropped: for ``name`` and ``nameStartsWith``
    sort_name: str  # lower-cased, as Marvel's default order compares names
    modified: datetime
    encoded: bytes  # the character object exactly as given, as compact JSON
    appears_in: Mapping[str, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> Entry:
        name = raw["name"]
        return cls(
            id=raw["id"],
            name=name,
            match_name=name.casefold().rstrip(" "),
            sort_name=name.lower(),
            modified=parse_marvel_time(raw["modified"]) or BEFORE_EVERYTHING,
            encoded=json.dumps(raw, ensure_ascii=False, separators=(",", ":")).encode(),
            appears_in={kind: _item_ids(raw.get(kind)) for kind in APPEARANCE_LISTS},
        )


@dataclass(frozen=True, slots=True)
class Selection:
    """What a list query selects, before paging."""

    name: str | None = None
    name_starts_with: str | None = None
    modified_since: datetime | None = None
    appears_in: tuple[tuple[str, frozenset[int]], ...] = ()
    order_by: tuple[str, ...] = ()

    @property
    def filters(self) -> bool:
        """True when the selection drops characters (False: every one, in some order)."""
        return any(
            (self.name is not None, self.name_starts_with is not None,
             self.modified_since is not None, self.appears_in)
        )  # fmt: skip

    def predicate(self) -> Callable[[Entry], bool]:
        """A test for one entry, with the query's names normalized once."""
        name = None if self.name is None else self.name.casefold().rstrip(" ")
        prefix = None if self.name_starts_with is None else self.name_starts_with.casefold()
        since = self.modified_since
        appears_in = self.appears_in

        def test(entry: Entry) -> bool:
            if name is not None and entry.match_name != name:
                return False
            if prefix is not None and not entry.match_name.startswith(prefix):
                return False
            if since is not None and entry.modified < since:
                return False
            return all(entry.appears_in[kind] & ids for kind, ids in appears_in)

        return test


class Catalogue:
    """A set of characters, kept in Marvel's default order. It changes only through
    :meth:`put` (the simulator's change endpoints), which re-sorts it."""

    def __init__(self, characters: Iterable[Mapping[str, Any]]) -> None:
        entries = [Entry.from_raw(raw) for raw in characters]
        if len({e.id for e in entries}) != len(entries):
            raise DatasetError("character ids are not unique")
        self._index(entries)

    def _index(self, entries: list[Entry]) -> None:
        entries.sort(key=lambda e: -e.id)
        entries.sort(key=lambda e: e.sort_name)  # stable: ties keep the descending id
        self._by_name: tuple[Entry, ...] = tuple(entries)
        self._by_id = {e.id: e for e in entries}
        self._orders: dict[tuple[str, ...], tuple[Entry, ...]] = {(): self._by_name}

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, character_id: int) -> Entry | None:
        return self._by_id.get(character_id)

    def put(self, raw: Mapping[str, Any]) -> Entry:
        """Add a character, or replace the one with its id; DatasetError if malformed."""
        _check_character(raw, f"character {raw.get('id')!r}")
        entry = Entry.from_raw(raw)
        self._index([e for e in self._by_name if e.id != entry.id] + [entry])
        return entry

    def ids(self) -> list[int]:
        """Every id, ascending."""
        return sorted(self._by_id)

    def next_id(self) -> int:
        """An id no character has: one more than the highest."""
        return max(self._by_id, default=0) + 1

    def select(self, selection: Selection) -> list[Entry]:
        """Every entry the selection matches, in its order."""
        ordered = self.ordered(selection.order_by)
        if not selection.filters:
            return list(ordered)
        return list(filter(selection.predicate(), ordered))

    def ordered(self, order_by: Sequence[str]) -> tuple[Entry, ...]:
        """All entries ordered by ``name``/``modified`` keys (``-`` for descending), the
        default order breaking ties. Orders are computed once and kept."""
        key = tuple(order_by)
        if key not in self._orders:
            entries = list(self._by_name)
            for item in reversed(key):
                field_name = item.lstrip("-")
                descending = item.startswith("-")
                if field_name == "name":
                    entries.sort(key=lambda e: e.sort_name, reverse=descending)
                else:
                    entries.sort(key=lambda e: e.modified, reverse=descending)
            self._orders[key] = tuple(entries)
        return self._orders[key]


def load_dataset(path: Path) -> list[dict[str, Any]]:
    """Read a JSON array of Marvel character objects (the shape of ``characters.json``)."""
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise DatasetError(f"dataset {path} is not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise DatasetError(f"dataset {path} is not a JSON array")
    for index, raw in enumerate(data):
        _check_character(raw, f"{path}[{index}]")
    log.debug("read %d characters from %s", len(data), path)
    return data


def _check_character(raw: Any, where: str) -> None:
    if not isinstance(raw, dict):
        raise DatasetError(f"{where} is not an object")
    if missing := [k for k in REQUIRED_KEYS if k not in raw]:
        raise DatasetError(f"{where} lacks {', '.join(missing)}")
    if isinstance(raw["id"], bool) or not isinstance(raw["id"], int):
        raise DatasetError(f"{where}: id {raw['id']!r} is not an integer")
    if not isinstance(raw["name"], str) or not isinstance(raw["modified"], str):
        raise DatasetError(f"{where}: name and modified must be strings")


def _item_ids(section: Any) -> frozenset[int]:
    """The ids at the end of each item's ``resourceURI`` in a comics/series/... section."""
    if not isinstance(section, dict):
        return frozenset()
    ids = set()
    for item in section.get("items") or ():
        uri = item.get("resourceURI", "") if isinstance(item, dict) else ""
        tail = uri.rsplit("/", 1)[-1]
        if tail.isdigit():
            ids.add(int(tail))
    return frozenset(ids)
