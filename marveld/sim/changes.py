"""Changing the simulator's characters, as Marvel's editors did: a partial update (the
given fields replace the stored ones, ``modified`` becomes now) and a new character.

These are the simulator's own additions to the API (webhook simulation), not Marvel's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from marveld.domain.characters import Character
from marveld.domain.errors import UpstreamError
from marveld.sim.generate import GATEWAY, NOT_AVAILABLE

# What a change may set; ``id`` and ``modified`` are the simulator's to decide.
EDITABLE: Final = frozenset(
    {
        "name",
        "description",
        "thumbnail",
        "resourceURI",
        "comics",
        "series",
        "stories",
        "events",
        "urls",
    }
)
SECTIONS: Final = ("comics", "series", "stories", "events")


class ChangeRefused(ValueError):
    """The requested change is not a valid character change; the text says why."""


def marvel_time(now: datetime) -> str:
    """``now`` the way Marvel writes ``modified``: ``2026-03-01T12:00:00+0000``."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S%z")


def updated(raw: Mapping[str, Any], partial: Any, now: datetime) -> dict[str, Any]:
    """``raw`` with the fields of ``partial`` replaced and ``modified`` set to ``now``."""
    fields = _checked(partial)
    changed = {**raw, **fields, "modified": marvel_time(now)}
    _parse(changed)
    return changed


def created(partial: Any, new_id: int, now: datetime) -> dict[str, Any]:
    """A new character with ``new_id``; ``name`` is required, the rest has defaults."""
    fields = _checked(partial)
    if not isinstance(fields.get("name"), str) or not fields["name"].strip():
        raise ChangeRefused("a new character needs a name")
    uri = f"{GATEWAY}/characters/{new_id}"
    character: dict[str, Any] = {
        "id": new_id,
        "name": fields["name"],
        "description": "",
        "modified": marvel_time(now),
        "thumbnail": {"path": NOT_AVAILABLE, "extension": "jpg"},
        "resourceURI": uri,
        **{
            section: {
                "available": 0,
                "collectionURI": f"{uri}/{section}",
                "items": [],
                "returned": 0,
            }
            for section in SECTIONS
        },
        "urls": [],
    }
    character.update({k: v for k, v in fields.items() if k != "name"})
    _parse(character)
    return character


def _empty_section(uri: str, section: str) -> dict[str, Any]:
    return {"available": 0, "collectionURI": f"{uri}/{section}", "items": [], "returned": 0}


def _checked(partial: Any) -> dict[str, Any]:
    if not isinstance(partial, dict):
        raise ChangeRefused("the body must be a JSON object of character fields")
    if unknown := sorted(set(partial) - EDITABLE):
        raise ChangeRefused(
            f"cannot set {', '.join(unknown)}; editable fields: {', '.join(sorted(EDITABLE))}"
        )
    if "name" in partial and (not isinstance(partial["name"], str) or not partial["name"].strip()):
        raise ChangeRefused("name must be a non-empty string")
    return dict(partial)


def _parse(raw: Mapping[str, Any]) -> None:
    """Refuse what a Marvel client could not read."""
    try:
        Character.from_marvel(raw)
    except UpstreamError as exc:
        raise ChangeRefused(f"not a valid character: {exc}") from None
