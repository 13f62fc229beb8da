"""Syncs with the upstream: the first full sync (bootstrap) and the polls after it.

Every batch of upstream characters, from any path, is applied by :meth:`SyncService.apply`:
one transaction (``storage.changes``), then the metrics, then ``forget_cached`` with the
cache keys the batch invalidated, for the memory tier in front of SQLite.

- **Bootstrap** pages through ``/characters?orderBy=modified&limit=100&offset=N``. Each
  page is one transaction that also records the next offset, so a killed process resumes
  where it stopped, under the same run id. A change mid-sync shifts the offsets (the
  changed character moves to the end), so when fewer characters than the upstream's
  total are stored at the end, it pages through again (at most BOOTSTRAP_PASSES in all).
  Its events are a bulk import (correlation id ``bootstrap:<run>``, ``sync.bootstrap``
  says ``"bulk": true``): they notify nobody.
- **Poll** asks for ``modifiedSince=<newest modified seen>&orderBy=modified&limit=100``
  with ``If-None-Match`` set to the etag of that same first page last time, so an
  unchanged poll costs one call answered 304 (the etag is sent for ``etag_max_age`` after
  the page was last fetched in full; then one unconditional poll refreshes it, so an
  upstream whose 304s lie is caught). Later pages are asked for by keyset
  (``modifiedSince`` = the last ``modified`` seen, ``offset`` = how many with that time
  were seen), so a character changing mid-poll cannot shift one past the pages. Each page
  advances the checkpoint in its own transaction: a failed poll loses no place.
  One case the offset cannot cover: a character counted in it changes mid-poll and leaves
  its ``modified``, so the offset then skips one never seen. That character comes back on
  a later page (changed); when one does, the checkpoint stays at the first time paged by
  offset, and the next poll reads from there again (re-applying unchanged data is a no-op).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

import trio

from marveld.domain.changes import Provenance
from marveld.domain.characters import Character
from marveld.metrics import Metrics
from marveld.services.guard import POLLER
from marveld.storage import BatchResult, Store
from marveld.storage.sync_state import BOOTSTRAP, LAST_COMPLETED, POLL_CHECKPOINT, POLL_FIRST_PAGE
from marveld.upstream import MarvelClient

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 100  # Marvel's largest page
BOOTSTRAP_KIND: Final = "bootstrap"
POLL_KIND: Final = "poll"
CLUSTER_RETRY_SECONDS: Final = 0.5  # how often a sync waiting for another's asks again
BOOTSTRAP_PASSES: Final = 3  # most passes of one first sync (see _bootstrap)

ForgetCached = Callable[[Collection[str]], None]
"""Called after each committed batch with the cache keys it deleted from SQLite."""


@dataclass(frozen=True, slots=True)
class SyncReport:
    """One sync run. ``calls`` counts list calls (``pages`` of them answered 200)."""

    kind: str
    run_id: str
    pages: int = 0
    calls: int = 0
    not_modified: bool = False
    added: int = 0
    updated: int = 0
    waited: bool = False  # another replica's sync ran first

    @property
    def outcome(self) -> str:
        if self.not_modified:
            return "not_modified"
        return "changed" if self.added or self.updated else "unchanged"


class SyncService:
    def __init__(
        self,
        store: Store,
        upstream: MarvelClient,
        metrics: Metrics,
        clock: Callable[[], datetime],
        forget_cached: ForgetCached,
        *,
        page_size: int = PAGE_SIZE,
        on_committed: Callable[[BatchResult], None] | None = None,
        etag_max_age: float = float("inf"),
    ) -> None:
        """``on_committed``: called (synchronously) after each batch that appended events,
        once it is committed (the notifier's wake-up)."""
        self._store = store
        self._upstream = upstream
        self._metrics = metrics
        self._clock = clock
        self._forget = forget_cached
        self._page_size = page_size
        self._on_committed = on_committed
        self._first_sync_seen = False
        self._etag_max_age = etag_max_age
        self._running = trio.Lock()

    async def first_sync_done(self) -> bool:
        """Whether a first full sync has ended (on any replica). Once it has, the answer
        is kept: /readyz then reads nothing from the database for it."""
        if not self._first_sync_seen:
            self._first_sync_seen = await self._store.sync_state.first_sync_done()
        return self._first_sync_seen

    async def last_completed(self) -> datetime | None:
        """When the last sync that ended well ended (by the clock passed in)."""
        completed = await self._store.sync_state.get(LAST_COMPLETED)
        return None if not completed else datetime.fromisoformat(completed["at"])

    async def apply(
        self,
        characters: Sequence[Character],
        provenance: Provenance,
        *,
        match_added: bool = True,
        state: Mapping[str, Any] | None = None,
        delivery_id: str | None = None,
    ) -> BatchResult:
        """Apply one batch in one transaction; then count it and forget its cache keys."""
        result = await self._store.changes.apply(
            characters,
            provenance=provenance,
            now=self._clock(),
            match_added=match_added,
            state=state,
            delivery_id=delivery_id,
        )
        self._metrics.batch_applied(
            provenance.source, result.added, result.updated, [e.type for e in result.events]
        )
        if result.forgotten:
            self._forget(result.forgotten)
        if result.events and self._on_committed is not None:
            self._on_committed(result)
        return result

    async def run_once(self) -> SyncReport:
        """One sync now, after any that is running: the bootstrap until it has completed
        (resuming a killed one), then a poll. Raises UpstreamError when the upstream fails
        (what was applied before stays applied)."""
        async with self._running, self._cluster_turn() as waited:
            kind = POLL_KIND if await self.first_sync_done() else BOOTSTRAP_KIND
            started = trio.current_time()
            try:
                report = await (self._poll() if kind == POLL_KIND else self._bootstrap())
                report = dataclasses.replace(report, waited=waited)
            except Exception:
                self._metrics.sync_run(kind, "failed", trio.current_time() - started)
                raise
            self._metrics.sync_run(kind, report.outcome, trio.current_time() - started)
            log.info(
                "%s %s: %d call(s), %d page(s)%s, %d added, %d updated",
                kind,
                report.run_id,
                report.calls,
                report.pages,
                " (not modified)" if report.not_modified else "",
                report.added,
                report.updated,
            )
            return report

    @asynccontextmanager
    async def _cluster_turn(self) -> AsyncIterator[bool]:
        """The cluster's sync lock (with replicas, one sync at a time for all of them):
        taken at once (False), or after the sync another replica runs (True, logged)."""
        said = False
        while True:
            async with self._store.coordination.exclusive("sync") as mine:
                if mine:
                    yield said
                    return
            if not said:
                log.info("a sync is running on another replica: this one runs after it")
                said = True
            await trio.sleep(CLUSTER_RETRY_SECONDS)

    async def _bootstrap(self) -> SyncReport:
        saved: dict[str, Any] = await self._store.sync_state.get(BOOTSTRAP) or {}
        run_id = saved.get("run_id") or str(uuid.uuid4())
        offset = int(saved.get("next_offset", 0))
        if offset:
            log.info("resuming the first full sync %s at offset %d", run_id, offset)
        cause = f"bootstrap:{run_id}"
        provenance = Provenance(source="bootstrap", correlation_id=cause, causation_id=cause)
        progress: dict[str, Any] = {
            "run_id": run_id,
            "correlation_id": cause,
            "bulk": True,
            "started_at": saved.get("started_at") or _text(self._clock()),
            "completed_at": None,
            "next_offset": offset,
            "newest": saved.get("newest"),
        }
        report = SyncReport(kind=BOOTSTRAP_KIND, run_id=run_id)
        passes = 1
        while True:
            params = {"orderBy": "modified", "limit": str(self._page_size), "offset": str(offset)}
            page = await self._upstream.list_characters(params, purpose=POLLER)
            assert page is not None  # no etag was sent
            offset += len(page.characters)
            progress |= {
                "next_offset": offset,
                "newest": _newest(progress["newest"], page.characters),
            }
            state = {BOOTSTRAP: progress}
            result = await self.apply(page.characters, provenance, match_added=False, state=state)
            report = _count(report, result)
            if len(page.characters) == self._page_size and offset < page.total:
                continue
            # A character changed after its page was imported moves to the end of the
            # order, and the one after it slides back past the offset: if some are
            # missing, page through once more (unchanged ones cost no event).
            stored = await self._store.reads.count()
            if stored < page.total and passes < BOOTSTRAP_PASSES:
                log.warning(
                    "first full sync %s: %d of %d characters after pass %d; another pass",
                    run_id,
                    stored,
                    page.total,
                    passes,
                )
                passes, offset = passes + 1, 0
                continue
            now = _text(self._clock())
            progress["completed_at"] = now
            rows: dict[str, Any] = {
                BOOTSTRAP: progress,
                POLL_CHECKPOINT: {"modified_since": progress["newest"]},
                LAST_COMPLETED: {"at": now, "kind": BOOTSTRAP_KIND, "run_id": run_id},
            }
            await self._store.sync_state.put(rows, self._clock())
            return report

    async def _poll(self) -> SyncReport:
        run_id = str(uuid.uuid4())
        cause = f"poll:{run_id}"
        provenance = Provenance(source="poll", correlation_id=cause, causation_id=cause)
        saved = await self._store.sync_state.get_many(POLL_CHECKPOINT, POLL_FIRST_PAGE)
        since_text = (saved[POLL_CHECKPOINT] or {}).get("modified_since")
        since = None if since_text is None else datetime.fromisoformat(since_text)
        newest: str | None = since_text
        skip = 0
        first = True
        report = SyncReport(kind=POLL_KIND, run_id=run_id)
        seen: set[int] = set()
        offset_since: datetime | None = None  # the first time paged with an offset
        rewind: str | None = None  # the checkpoint to keep when the offset may have skipped
        while True:
            params = self._poll_params(since, skip)
            key = urlencode(sorted(params.items()))
            stored = saved[POLL_FIRST_PAGE] or {}
            trusted = first and stored.get("params") == key and self._trusted(stored)
            etag = stored.get("etag") if trusted else None
            page = await self._upstream.list_characters(params, etag=etag, purpose=POLLER)
            if page is None:  # 304: nothing changed since the last poll
                now = _text(self._clock())
                completed = {"at": now, "kind": POLL_KIND, "run_id": run_id}
                await self._store.sync_state.put({LAST_COMPLETED: completed}, self._clock())
                return _count(report, BatchResult(), calls=1, not_modified=True)
            ids = {c.id for c in page.characters}
            if offset_since is not None and rewind is None and not seen.isdisjoint(ids):
                rewind = _text(offset_since)  # one seen came back: the offset may skip one
                log.info("poll %s: a character changed mid-poll; next poll from %s", run_id, rewind)
            seen |= ids
            newest = _newest(newest, page.characters)
            checkpoint = newest if rewind is None else rewind
            rows: dict[str, Any] = {POLL_CHECKPOINT: {"modified_since": checkpoint}}
            if first:
                fetched = _text(self._clock())
                rows[POLL_FIRST_PAGE] = {"params": key, "etag": page.etag, "fetched_at": fetched}
            done = len(page.characters) < self._page_size
            if done:
                now = _text(self._clock())
                rows[LAST_COMPLETED] = {"at": now, "kind": POLL_KIND, "run_id": run_id}
            result = await self.apply(page.characters, provenance, state=rows)
            report = _count(report, result, calls=1, pages=1)
            if done:
                return report
            last = page.characters[-1].modified
            if last is not None and (since is None or last > since):
                since, skip = last, sum(c.modified == last for c in page.characters)
            else:
                skip += len(page.characters)
            if skip and offset_since is None:
                offset_since = since
            first = False

    def _trusted(self, first_page: Mapping[str, Any]) -> bool:
        """Whether the first page's etag is recent enough to send (``etag_max_age`` since
        the page was fetched in full); a checkpoint without the time is not."""
        fetched = first_page.get("fetched_at")
        if not isinstance(fetched, str):
            return False
        age = (self._clock() - datetime.fromisoformat(fetched)).total_seconds()
        return age < self._etag_max_age

    def _poll_params(self, since: datetime | None, skip: int) -> dict[str, str]:
        params = {"orderBy": "modified", "limit": str(self._page_size), "offset": str(skip)}
        if since is not None:
            params["modifiedSince"] = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
        return params


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _newest(current: str | None, characters: Iterable[Character]) -> str | None:
    """The newest of ``current`` (text) and the characters' ``modified`` (placeholders
    have none), as text."""
    times = [c.modified for c in characters]
    known = [t for t in times if t is not None]
    if current is not None:
        known.append(datetime.fromisoformat(current))
    return _text(max(known)) if known else None


def _count(
    report: SyncReport,
    result: BatchResult,
    *,
    calls: int = 1,
    pages: int = 1,
    not_modified: bool = False,
) -> SyncReport:
    return SyncReport(
        kind=report.kind,
        run_id=report.run_id,
        pages=report.pages + (0 if not_modified else pages),
        calls=report.calls + calls,
        not_modified=not_modified,
        added=report.added + result.added,
        updated=report.updated + result.updated,
    )
