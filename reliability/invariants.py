"""What must hold in a marveld database whatever happened to the process: the checks the
crash and soak suites run after every kill and at the end.

Each check returns a list of problems (plain sentences; empty when it holds). They read
the SQLite file directly with the standard library, in a read transaction of their own, so
they may run while a daemon is up (WAL) or after it died.

- ``integrity``: ``PRAGMA integrity_check`` and ``foreign_key_check``.
- ``event_log``: per character, exactly one ``CharacterAdded`` and it comes first; every
  later event moves ``modified`` forward (an event applied twice would repeat a version).
- ``projection``: the read table equals a fold of the events, and the ``characters``
  table holds the same content.
- ``matches_upstream``: every upstream character stored once, with the upstream's content.
- ``notifications_complete``: every event that should notify a user did so, once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from marveld.domain.changes import CHARACTER_ADDED, Event, project
from marveld.domain.characters import Character, CharacterPage, parse_marvel_time
from marveld.domain.notifications import LoggedEvent, silent
from marveld.sim import marvel_hash

PAGE = 100


@contextmanager
def reading(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to ``db`` with one snapshot for everything read through it."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30.0)) as conn:
        conn.row_factory = sqlite3.Row
        conn.execute("BEGIN")
        yield conn
        conn.rollback()


def integrity(conn: sqlite3.Connection) -> list[str]:
    problems = [
        f"integrity_check: {row[0]}"
        for row in conn.execute("PRAGMA integrity_check")
        if row[0] != "ok"
    ]
    problems += [f"foreign key: {tuple(row)}" for row in conn.execute("PRAGMA foreign_key_check")]
    return problems


def _events(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return list(
        conn.execute(
            "SELECT seq, id, stream_id, type, correlation_id, created_at, occurred_at, data"
            " FROM events ORDER BY seq"
        )
    )


def fold(conn: sqlite3.Connection) -> dict[int, dict[str, Any]]:
    """Each character's JSON as the event log tells it (the projection, recomputed)."""
    state: dict[int, dict[str, Any]] = {}
    for row in _events(conn):
        data = json.loads(row["data"])
        event = Event(
            id=row["id"],
            stream_id=row["stream_id"],
            type=row["type"],
            correlation_id=row["correlation_id"] or "",
            causation_id=None,
            occurred_at=datetime.fromisoformat(row["occurred_at"]),
            created_at=datetime.fromisoformat(row["created_at"]),
            data=data,
            seq=row["seq"],
        )
        marvel_id = int(data["marvel_id"])
        state[marvel_id] = project(state.get(marvel_id), event)
    return state


def event_log(conn: sqlite3.Connection) -> list[str]:
    problems: list[str] = []
    seen: dict[str, dict[str, Any]] = {}
    for row in _events(conn):
        stream, data = row["stream_id"], json.loads(row["data"])
        if row["type"] == CHARACTER_ADDED:
            if stream in seen:
                problems.append(f"{stream}: added twice (event {row['seq']})")
            seen[stream] = dict(data["character"])
            continue
        before = seen.get(stream)
        if before is None:
            problems.append(f"{stream}: updated (event {row['seq']}) before it was added")
            continue
        after = {**before, **data["changes"]}
        if after == before:
            problems.append(f"{stream}: event {row['seq']} changes nothing (applied twice?)")
        old, new = before.get("modified"), after.get("modified")
        older, newer = _when(old), _when(new)
        if older and newer and newer <= older and "modified" in data["changes"]:
            problems.append(f"{stream}: event {row['seq']} does not move modified forward")
        seen[stream] = after
    return problems


def _when(text: str | None) -> datetime | None:
    """``modified`` as stored (Marvel's text), or None for none and for the placeholders
    the API really sends (``-0001-11-30T00:00:00-0500``): no order to check then."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return parse_marvel_time(text)


def projection(conn: sqlite3.Connection) -> list[str]:
    folded = fold(conn)
    reads = {
        int(row["marvel_id"]): json.loads(row["data"])
        for row in conn.execute("SELECT marvel_id, data FROM character_reads")
    }
    stored = {
        int(row["marvel_id"]): json.loads(row["data"])
        for row in conn.execute("SELECT marvel_id, data FROM characters")
    }
    problems = _compare("read table", reads, "events", folded)
    problems += _compare("characters table", stored, "events", folded)
    return problems


def _compare(
    name: str, have: Mapping[int, Any], reference_name: str, reference: Mapping[int, Any]
) -> list[str]:
    problems = [
        f"{name} lacks character {i} ({reference_name} has it)"
        for i in reference.keys() - have.keys()
    ]
    problems += [
        f"{name} has character {i} that {reference_name} lacks"
        for i in have.keys() - reference.keys()
    ]
    problems += [
        f"{name} differs from {reference_name} for character {i}"
        for i in sorted(have.keys() & reference.keys())
        if have[i] != reference[i]
    ]
    return problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])


def upstream_catalogue(
    api_url: str, public_key: str, private_key: str, timeout: float = 30.0
) -> dict[int, Character]:
    """Every character the upstream serves now, by id (pages of 100 by id)."""
    found: dict[int, Character] = {}
    with httpx.Client(base_url=api_url, timeout=timeout) as http:
        offset = 0
        while True:
            ts = "reliability"
            params = {
                "orderBy": "name",
                "limit": str(PAGE),
                "offset": str(offset),
                "ts": ts,
                "apikey": public_key,
                "hash": marvel_hash(ts, private_key, public_key),
            }
            response = http.get("characters", params=params)
            response.raise_for_status()
            page = CharacterPage.from_marvel(response.json())
            found.update((c.id, c) for c in page.characters)
            offset += len(page.characters)
            if not page.characters or offset >= page.total:
                return found


def matches_upstream(conn: sqlite3.Connection, upstream: Mapping[int, Character]) -> list[str]:
    """Every upstream character stored once, with the same content."""
    stored = {
        int(row["marvel_id"]): row["content_hash"]
        for row in conn.execute("SELECT marvel_id, content_hash FROM characters")
    }
    expected = {i: c.content_hash() for i, c in upstream.items()}
    problems = _compare("the database", stored, "the upstream", expected)
    (count,) = conn.execute("SELECT count(*) FROM characters").fetchone()
    if count != len(stored):
        problems.append(f"{count} character rows for {len(stored)} ids")
    return problems


def expected_notifications(conn: sqlite3.Connection, user_id: str) -> set[int]:
    """The event seqs that must notify ``user_id`` (subscribed to everything)."""
    (created,) = conn.execute("SELECT created_at FROM users WHERE id = ?", (user_id,)).fetchone()
    bootstrap = conn.execute("SELECT value FROM sync_state WHERE key = 'sync.bootstrap'").fetchone()
    completed_text = json.loads(bootstrap[0]).get("completed_at") if bootstrap else None
    completed = None if completed_text is None else datetime.fromisoformat(completed_text)
    joined = datetime.fromisoformat(created)
    expected: set[int] = set()
    for row in _events(conn):
        event = LoggedEvent(
            seq=row["seq"],
            id=row["id"],
            type=row["type"],
            correlation_id=row["correlation_id"] or "",
            created_at=datetime.fromisoformat(row["created_at"]),
            occurred_at=datetime.fromisoformat(row["occurred_at"]),
            data=json.loads(row["data"]),
        )
        if not silent(event, completed) and event.created_at >= joined:
            expected.add(event.seq)
    return expected


def notifications_complete(
    conn: sqlite3.Connection, user_id: str, received: Iterable[int] | None = None
) -> list[str]:
    """Every event that should notify ``user_id`` has one notification row (the saga is
    at the end of the log, so call this once the daemon has settled); when ``received``
    (cursors a client got) is given, the client got every one of them at least once."""
    expected = expected_notifications(conn, user_id)
    rows = [
        int(row[0])
        for row in conn.execute(
            "SELECT event_seq FROM notifications WHERE recipient_id = ?", (user_id,)
        )
    ]
    problems = []
    if len(rows) != len(set(rows)):
        problems.append(f"{len(rows) - len(set(rows))} duplicate notification row(s)")
    missing = sorted(expected - set(rows))
    if missing:
        problems.append(f"{len(missing)} event(s) notified nobody: seq {missing[:10]}")
    extra = sorted(set(rows) - expected)
    if extra:
        problems.append(f"{len(extra)} notification(s) for events that notify nobody: {extra[:10]}")
    if received is not None:
        lost = sorted(set(rows) - set(received))
        if lost:
            problems.append(f"{len(lost)} notification(s) never reached the client: {lost[:10]}")
    return problems


def check_all(db: Path, upstream: Mapping[int, Character] | None = None) -> list[str]:
    """integrity, event_log and projection (and matches_upstream when given)."""
    with reading(db) as conn:
        problems = integrity(conn) + event_log(conn) + projection(conn)
        if upstream is not None:
            problems += matches_upstream(conn, upstream)
    return problems
