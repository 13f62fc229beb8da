"""A generated, Marvel-shaped catalogue for when no recorded dataset is given.

Deterministic for a seed: the same seed gives the same characters, byte for byte. Names are
built from parts, so prefixes such as ``Spider`` and ``Iron`` find several characters, the
well-known one first. A few well-known ids (1009610 ``Spider-Man``, 1009368 ``Iron Man``,
...) are always present so demos can fetch them. ``modified`` values include the two
placeholders the real API sent.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

DEFAULT_COUNT = 1500
FIRST_GENERATED_ID = 1011000
EPOCH_PLACEHOLDER = "1969-12-31T19:00:00-0500"
NEVER_PLACEHOLDER = "-0001-11-30T00:00:00-0500"
GATEWAY = "http://gateway.marvel.com/v1/public"
IMAGES = "http://i.annihil.us/u/prod/marvel/i/mg"
NOT_AVAILABLE = f"{IMAGES}/b/40/image_not_available"
UTM = "utm_campaign=apiRef&utm_source=0000000000000000000000000000000a"

WELL_KNOWN = {
    1009610: "Spider-Man",
    1009368: "Iron Man",
    1009351: "Hulk",
    1009220: "Captain America",
    1009664: "Thor",
    1009718: "Wolverine",
    1009189: "Black Widow",
    1009165: "Avengers",
}
HEADS = (
    "Spider", "Iron", "Captain", "Doctor", "Black", "Silver", "Night", "Star", "Dark",
    "Ghost", "Moon", "Storm", "Thunder", "Shadow", "Fire", "Ice", "Steel", "Blood", "War",
    "Sun", "Crimson", "Cosmic", "Quantum", "Red", "Blue", "White", "Golden", "Ultra",
)  # fmt: skip
# Tails are hyphenated or glued, so a well-known ``Spider-Man`` or ``Iron Man`` sorts first
# among the names that share its head.
TAILS = (
    "-Man", "-Woman", "hawk", "fire", "blade", "storm", "wolf", "strike", "clad", "bolt",
    "fang", "claw", "wing", "shot", "jack", "star", "heart", "lord", "born", "skull",
)  # fmt: skip
TITLES = (
    "Mister", "Madame", "Baron", "Lady", "Agent", "Professor", "General", "Count", "Killer",
    "Living", "Major", "Sister",
)  # fmt: skip
NOUNS = (
    "Sinister", "Hydra", "Zero", "Mayhem", "Nightmare", "Tiger", "Monolith", "Laser", "Vortex",
    "Cobra", "Eclipse", "Karma", "Omega", "Pulse", "Raven", "Tempest", "Vector", "Wraith",
    "Zephyr", "Nova",
)  # fmt: skip
QUALIFIERS = (
    "(Ultimate)", "(2099)", "(House of M)", "(Marvel Zombies)", "(Noir)", "(1602)",
    "(LEGO Marvel Super Heroes)", "(Earth-616)", "(Age of Apocalypse)", "(MAA)",
)  # fmt: skip
FIRST_NAMES = (
    "Peter", "Jessica", "Miles", "Carol", "Tony", "Natasha", "Bruce", "Jean", "Scott",
    "Wanda", "Kamala", "Luke", "Danny", "Riri", "Sam", "Jennifer", "Matt", "Elektra",
)  # fmt: skip
LAST_NAMES = (
    "Parker", "Drew", "Morales", "Danvers", "Stark", "Romanoff", "Banner", "Grey", "Lang",
    "Maximoff", "Khan", "Cage", "Rand", "Williams", "Wilson", "Walters", "Murdock", "Natchios",
)  # fmt: skip
SERIES = (
    "Amazing Spider-Man", "Avengers", "Uncanny X-Men", "Fantastic Four", "Iron Man",
    "Daredevil", "Thor", "Captain America", "Marvel Team-Up", "Secret Wars", "Champions",
)  # fmt: skip
EVENTS = ("Civil War", "Secret Invasion", "Infinity", "Fear Itself", "House of M", "Siege")
STORY_TYPES = ("cover", "interiorStory", "pinup", "recap", "")
MAX_ITEMS = 20

ItemMaker = Callable[[random.Random], dict[str, str]]


def generate_characters(seed: int = 0, count: int = DEFAULT_COUNT) -> list[dict[str, Any]]:
    """``count`` Marvel-shaped character objects, the well-known ones included."""
    rng = random.Random(seed)
    names = _names(rng, count - len(WELL_KNOWN))
    ids = list(WELL_KNOWN) + [FIRST_GENERATED_ID + i for i in range(len(names))]
    all_names = list(WELL_KNOWN.values()) + names
    return [
        _character(rng, cid, name, famous=cid in WELL_KNOWN)
        for cid, name in zip(ids, all_names, strict=True)
    ]


def _names(rng: random.Random, count: int) -> list[str]:
    taken = {_name_key(name) for name in WELL_KNOWN.values()}
    names: list[str] = []
    while len(names) < count:
        if rng.random() < 0.75:
            base = rng.choice(HEADS) + rng.choice(TAILS)
        else:
            base = f"{rng.choice(TITLES)} {rng.choice(NOUNS)}"
        roll = rng.random()
        if roll < 0.35:
            name = f"{base} ({rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)})"
        elif roll < 0.6:
            name = f"{base} {rng.choice(QUALIFIERS)}"
        else:
            name = base
        if _name_key(name) not in taken:
            taken.add(_name_key(name))
            names.append(name)
    return names


def _name_key(name: str) -> str:
    """Names that differ only in case or hyphens would confuse: ``Iron-Man``, ``Iron Man``."""
    return name.casefold().replace("-", " ")


def _character(rng: random.Random, cid: int, name: str, *, famous: bool) -> dict[str, Any]:
    """One character; ``famous`` ones have a description, a real time and many comics."""
    uri = f"{GATEWAY}/characters/{cid}"
    slug = name.lower().replace(" ", "_").replace("(", "").replace(")", "")
    urls = [
        {"type": "detail", "url": f"http://marvel.com/characters/{cid}/{slug}?{UTM}"},
        {"type": "wiki", "url": f"http://marvel.com/universe/{slug}?{UTM}"},
        {"type": "comiclink", "url": f"http://marvel.com/comics/characters/{cid}/{slug}?{UTM}"},
    ]
    return {
        "id": cid,
        "name": name,
        "description": _description(rng, name, famous=famous),
        "modified": _modified(rng, famous=famous),
        "thumbnail": _thumbnail(rng),
        "resourceURI": uri,
        "comics": _section(rng, uri, "comics", _issue_name, famous=famous),
        "series": _section(rng, uri, "series", _series_name, famous=famous),
        "stories": _section(rng, uri, "stories", _story_name, famous=famous),
        "events": _section(rng, uri, "events", _event_name, famous=famous),
        "urls": urls if rng.random() < 0.7 else [urls[0], urls[2]],
    }


def _description(rng: random.Random, name: str, *, famous: bool) -> str:
    if not famous and rng.random() < 0.8:
        return ""
    deed = rng.choice(("protects", "haunts", "patrols", "rules", "defends", "terrorizes"))
    place = rng.choice(("New York", "Wakanda", "Latveria", "the Negative Zone", "Asgard"))
    return f"{name} {deed} {place}, and nobody who meets them forgets it."


def _modified(rng: random.Random, *, famous: bool) -> str:
    """Half the real data carries the epoch placeholder and a few ``-0001``; the rest are
    US-Eastern times between 2004 and 2022, written like Marvel's (``-0400`` in summer)."""
    roll = 1.0 if famous else rng.random()
    if roll < 0.5:
        return EPOCH_PLACEHOLDER
    if roll < 0.51:
        return NEVER_PLACEHOLDER
    start = datetime(2004, 1, 1, tzinfo=UTC)
    moment = start + timedelta(seconds=rng.randrange(18 * 365 * 86400))
    hours = -4 if 4 <= moment.month <= 10 else -5
    local = moment + timedelta(hours=hours)
    return local.strftime("%Y-%m-%dT%H:%M:%S") + f"-0{-hours}00"


def _thumbnail(rng: random.Random) -> dict[str, str]:
    if rng.random() < 0.35:
        return {"path": NOT_AVAILABLE, "extension": "jpg"}
    path = f"{IMAGES}/{rng.choice('0123456789abcdef')}/{rng.randrange(16, 256):02x}/"
    path += "".join(rng.choice("0123456789abcdef") for _ in range(13))
    return {"path": path, "extension": rng.choice(("jpg", "jpg", "jpg", "gif", "png"))}


def _section(
    rng: random.Random, uri: str, kind: str, item: ItemMaker, *, famous: bool
) -> dict[str, Any]:
    if famous:
        available = rng.randrange(40, 1400)
    else:
        available = int(rng.paretovariate(1.2)) - 1 if rng.random() < 0.9 else 0
    available = min(available * (3 if kind == "stories" else 1), 4000)
    items = [item(rng) for _ in range(min(available, MAX_ITEMS))]
    return {
        "available": available,
        "collectionURI": f"{uri}/{kind}",
        "items": items,
        "returned": len(items),
    }


def _issue_name(rng: random.Random) -> dict[str, str]:
    year = rng.randrange(1963, 2022)
    title = f"{rng.choice(SERIES)} ({year}) #{rng.randrange(1, 700)}"
    return {"resourceURI": f"{GATEWAY}/comics/{rng.randrange(1, 99999)}", "name": title}


def _series_name(rng: random.Random) -> dict[str, str]:
    year = rng.randrange(1963, 2020)
    title = f"{rng.choice(SERIES)} ({year} - {year + rng.randrange(1, 10)})"
    return {"resourceURI": f"{GATEWAY}/series/{rng.randrange(1, 32000)}", "name": title}


def _story_name(rng: random.Random) -> dict[str, str]:
    number = rng.randrange(1, 200000)
    return {
        "resourceURI": f"{GATEWAY}/stories/{number}",
        "name": f"{rng.choice(SERIES)} story {number}",
        "type": rng.choice(STORY_TYPES),
    }


def _event_name(rng: random.Random) -> dict[str, str]:
    return {
        "resourceURI": f"{GATEWAY}/events/{rng.randrange(29, 330)}",
        "name": rng.choice(EVENTS),
    }
