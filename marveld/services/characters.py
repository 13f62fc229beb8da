"""Characters through the two-tier cache: memory (LRU), then SQLite, then the upstream.

Policies (DESIGN §5): a fresh TTL; stale-while-revalidate (serve the stale answer and
refresh it once in the background); stale-if-error (serve it when the upstream fails or
the budget is spent); a short TTL for empty answers; errors never cached. Concurrent misses
for one key share one upstream call (single-flight): the call runs in this service's own
nursery, so a caller that gives up does not cancel it for the others. With replicas
(PostgreSQL) the upstream call is also the cluster's: the replica that asks holds the
key's fill lease; the others wait for its stored answer (its signal), or for the lease
to end if it died, then one of them asks.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import trio

from marveld.domain.cache_policy import CachePolicy, Freshness
from marveld.domain.characters import ATTRIBUTION, Character, CharacterPage
from marveld.domain.errors import InvalidArgument, NotFound, ShuttingDown, UpstreamError
from marveld.domain.queries import CharacterQuery, SearchQuery, check_character_id
from marveld.metrics import Metrics
from marveld.services.catalog import LocalCatalog
from marveld.services.guard import CircuitBreaker
from marveld.services.memory_tier import Answer, MemoryTier
from marveld.storage import CacheEntry, StorageError, Store
from marveld.storage.coordination import Hearing
from marveld.upstream import MarvelClient

log = logging.getLogger(__name__)

FILL_LEASE_SECONDS: Final = 3.0
FILL_GRACE_SECONDS: Final = 0.05  # past the lease, before claiming it again

Fetch = Callable[[str | None], Awaitable[CharacterPage | None]]
"""Ask the upstream, with the etag of the copy we hold; None means 304 Not Modified."""

Encode = Callable[[str, CharacterPage], bytes]
"""The face's encoding of an answer, kept beside it so that a hit sends bytes as they are."""


class CacheStatus(enum.Enum):
    HIT = "hit"
    MISS = "miss"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class Served:
    """An answer and where it came from: the cache (fresh or stale) or the upstream now."""

    answer: Answer
    status: CacheStatus
    age_seconds: int

    @property
    def page(self) -> CharacterPage:
        return self.answer.page


@dataclass
class _Flight:
    """The one task serving a key's miss, that every concurrent caller of the key awaits."""

    done: trio.Event = field(default_factory=trio.Event)
    served: Served | None = None
    error: Exception | None = None


def character_key(marvel_id: int) -> str:
    return f"characters/{marvel_id}"


class CharacterService:
    def __init__(
        self,
        store: Store,
        upstream: MarvelClient,
        breaker: CircuitBreaker,
        memory: MemoryTier,
        metrics: Metrics,
        clock: Callable[[], datetime],
        *,
        policy: CachePolicy,
        encode: Encode,
        sweep_interval: float,
        catalog: LocalCatalog | None = None,
        on_stored: Callable[[], None] | None = None,
        fill_lease: float = FILL_LEASE_SECONDS,
    ) -> None:
        """``on_stored``: called after each upstream answer is stored (it may have appended
        events through the read-through diff: the notifier's wake-up). ``fill_lease``:
        how long identical misses on other replicas wait for this one's upstream call
        (PostgreSQL) before one of them asks itself."""
        self._store = store
        self._on_stored = on_stored
        self._upstream = upstream
        self._breaker = breaker
        self._memory = memory
        self._metrics = metrics
        self._clock = clock
        self._policy = policy
        self._encode = encode
        self._sweep_interval = sweep_interval
        self._catalog = catalog  # local gets and searches once the first sync is done
        self._flights: dict[str, _Flight] = {}
        self._refreshing: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._hearing = Hearing.LISTENING  # see hearing()
        self._fill_lease = fill_lease
        self._fills: dict[str, trio.Event] = {}  # keys another replica is filling

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The nursery for upstream calls and refreshes."""
        self._metrics.cache_entries.labels(tier="memory").set_function(lambda: len(self._memory))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None  # closed: a call that comes now is told ShuttingDown

    async def sweeps(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The sweeper of old entries, a leader's duty: a sweep now, then one every
        ``sweep_interval`` (each replica's memory tier also drops what it sees expired)."""
        await self.sweep()
        task_status.started()
        await self._sweep_forever()

    # --- the fast path: plain synchronous code, no awaits ------------------------------------

    def fresh(self, key: str) -> tuple[Answer, int] | None:
        """A fresh answer from the memory tier and its age, or None (then call the async
        methods). Cheap enough for the gRPC face to call before it enters trio."""
        if self._hearing is Hearing.LOST:
            return None
        answer = self._memory.get(key)
        if answer is None:
            return None
        now = self._clock()
        if now >= answer.expires_at:
            return None
        self._metrics.cache_result("memory", "hit")
        return answer, _age(now, answer.fetched_at)

    def fresh_search(self, query: SearchQuery) -> tuple[Answer, int] | None:
        """:meth:`fresh` for a search, while searches are still name prefixes upstream;
        None once the local read model answers them."""
        if self._catalog is not None and self._catalog.synced:
            return None
        return self.fresh(query.upstream_query().cache_key())

    # --- the use cases -------------------------------------------------------------------------

    async def list(self, query: CharacterQuery) -> Served:
        """Marvel's ``GET /characters`` for a validated query."""
        params = query.upstream_params()

        async def fetch(etag: str | None) -> CharacterPage | None:
            return await self._upstream.list_characters(params, etag=etag)

        return await self._serve(query.cache_key(), fetch)

    async def get(self, marvel_id: int) -> Served:
        """One character by Marvel's id; NotFound when the upstream has none (remembered for
        the short negative TTL)."""
        check_character_id(marvel_id)
        key = character_key(marvel_id)
        if self._catalog is not None and await self._catalog.is_synced():
            local = await self._catalog.get(marvel_id)
            if local is not None:  # else new upstream and not synced yet: read through
                page = _one_page((local,))
                return Served(self._local_answer(key, page), CacheStatus.HIT, 0)

        async def fetch(etag: str | None) -> CharacterPage:
            try:
                return _one_page((await self._upstream.get_character(marvel_id),))
            except NotFound:
                return _one_page(())

        served = await self._serve(key, fetch)
        if not served.page.characters:
            raise NotFound(f"character {marvel_id} not found")
        return served

    async def search(self, query: SearchQuery) -> Served:
        """Free-text search: the local full-text index once synced (always fresh: changes
        update it), else a name prefix upstream, through the cache."""
        if self._catalog is not None and await self._catalog.is_synced():
            page = await self._catalog.search(query)
            key = f"search?{query.text}"
            age = await self._catalog.age_seconds()
            return Served(self._local_answer(key, page), CacheStatus.HIT, age)
        return await self.list(query.upstream_query())

    def _local_answer(self, key: str, page: CharacterPage) -> Answer:
        now = self._clock()
        return Answer(key, page, now, now, None, self._encode(key, page))

    async def purge(self, *, key: str = "", marvel_id: int = 0, everything: bool = False) -> int:
        """Drop answers from both tiers: one key, every answer holding a character, or all.
        Returns how many SQLite rows went (the memory tier only ever holds copies)."""
        if everything:
            self._memory.clear()
            removed = await self._store.cache.clear()
        elif marvel_id > 0:
            keys = await self._store.cache.delete_for_character(marvel_id)
            self._memory.forget(keys)
            self._memory.forget_characters([marvel_id])
            self._memory.forget([character_key(marvel_id)])
            removed = len(keys)
        elif key:
            self._memory.forget([key])
            removed = int(await self._store.cache.delete(key))
        else:
            raise InvalidArgument("target", "name a key, a character id, or all")
        log.info("cache purge removed %d entries", removed)
        return removed

    def forget(self, keys: Iterable[str], *, every_key: bool = False) -> None:
        """Drop these keys (or all) from the memory tier: the database rows are gone or
        replaced already (here, or by another replica, which said so)."""
        if every_key:
            self._memory.clear()
            keys = list(self._fills)
        else:
            keys = list(keys)
            self._memory.forget(keys)
        for key in keys:  # a replica waiting for another's fill of the key reads it now
            if (event := self._fills.pop(key, None)) is not None:
                event.set()

    def hearing(self, state: Hearing) -> None:
        """How this replica hears the others' invalidations. While they may be missed
        (LOST), the memory tier is not trusted: every call reads the database, and a copy
        in memory is served only when the database cannot be read. Listening again after
        anything else, the memory tier is cleared (what was missed is gone with it)."""
        if state is Hearing.LISTENING and self._hearing is not Hearing.LISTENING:
            self._memory.clear()
        self._hearing = state

    # --- the read-through ------------------------------------------------------------------------
    #
    # A memory hit is answered at once. Anything else for a key runs as ONE task at a time
    # (a flight) that every concurrent caller of that key waits for: the SQLite read, then
    # the upstream call if the row is missing or too old. Background refreshes are tasks of
    # their own, one per key.

    async def _serve(self, key: str, fetch: Fetch) -> Served:
        now = self._clock()
        held = self._memory.get(key)
        if self._hearing is Hearing.LOST:  # the database first; memory if it cannot say
            return await self._join(key, lambda: self._load(key, fetch, fallback=held))
        if held is None:
            self._metrics.cache_result("memory", "miss")
            return await self._join(key, lambda: self._load(key, fetch))
        served = self._from_cache(key, fetch, held, now, tier="memory")
        if served is not None:
            return served
        return await self._join(key, lambda: self._renew(key, fetch, held))

    def _from_cache(
        self, key: str, fetch: Fetch, held: Answer, now: datetime, *, tier: str
    ) -> Served | None:
        """A fresh answer (HIT) or one in its revalidation window (STALE, and a refresh in
        the background); None when the upstream must be asked first."""
        freshness = self._policy.freshness(held.expires_at, now)
        if freshness is Freshness.FRESH:
            self._metrics.cache_result(tier, "hit")
            return Served(held, CacheStatus.HIT, _age(now, held.fetched_at))
        if freshness is Freshness.REVALIDATE:
            self._metrics.cache_result(tier, "stale")
            self._refresh(key, fetch, held)
            return Served(held, CacheStatus.STALE, _age(now, held.fetched_at))
        return None

    async def _load(self, key: str, fetch: Fetch, *, fallback: Answer | None = None) -> Served:
        """The database tier, then (when it has nothing usable) the upstream. When the
        database fails, ``fallback`` (a copy from memory) is served if it is usable."""
        try:
            entry = await self._store.cache.get(key)
        except StorageError:
            served = None
            if fallback is not None:
                served = self._from_cache(key, fetch, fallback, self._clock(), tier="memory")
            if served is None:
                raise
            return served
        if entry is None:
            self._metrics.cache_result(self._store.kind, "miss")
            return await self._renew(key, fetch, None)
        held = self._answer(key, entry)
        self._memory.put(held)
        served = self._from_cache(key, fetch, held, self._clock(), tier=self._store.kind)
        return served if served is not None else await self._renew(key, fetch, held)

    async def _renew(self, key: str, fetch: Fetch, held: Answer | None) -> Served:
        """Ask the upstream; when it fails, serve ``held`` if stale-if-error allows."""
        try:
            fetched = await self._fetch_and_keep(key, fetch, held)
        except UpstreamError as exc:
            now = self._clock()
            if held is None or self._policy.freshness(held.expires_at, now) is Freshness.DEAD:
                raise
            log.warning("serving stale %s: %s", key, exc)
            self._metrics.cache_result(self._store.kind, "stale")
            return Served(held, CacheStatus.STALE, _age(now, held.fetched_at))
        return Served(fetched, CacheStatus.MISS, 0)

    async def _fetch_and_keep(self, key: str, fetch: Fetch, held: Answer | None) -> Answer:
        """One upstream call (with the etag of what we hold), stored in both tiers; or,
        when another replica is filling ``key`` already, the answer it stores."""
        while True:
            # Waiting starts before the claim: the filler's signal may come right after it.
            filled = self._fills.setdefault(key, trio.Event())
            lease_ends = await self._claim(key)
            if lease_ends is None:
                break
            if await self._wait_for_fill(filled, lease_ends):
                entry = await self._store.cache.get(key)
                if entry is not None:
                    answer = self._answer(key, entry)
                    self._memory.put(answer)
                    return answer
            # the lease ran out (its holder died, or its signal was lost): claim it again
        if self._fills.get(key) is filled:
            del self._fills[key]
        renewing = trio.CancelScope()
        if self._store.coordination.shared:
            self._spawn(self._keep_lease, key, renewing)
        try:
            return await self._ask_upstream(key, fetch, held)
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
                await self._store.cache.release_fill(key)  # the others need not wait
            raise
        finally:
            renewing.cancel()

    async def _keep_lease(self, key: str, scope: trio.CancelScope) -> None:
        """Renew this replica's fill lease of ``key`` while its upstream call runs (with
        retries it may take longer than a lease): it ends only if this replica dies."""
        with scope:
            while True:
                await trio.sleep(self._fill_lease / 2)
                with contextlib.suppress(StorageError):
                    await self._claim(key)

    async def _claim(self, key: str) -> datetime | None:
        """None when this replica may ask the upstream for ``key`` (it holds the fill
        lease); else when the lease of the replica filling it ends."""
        return await self._store.cache.claim_fill(key, now=self._clock(), seconds=self._fill_lease)

    async def _wait_for_fill(self, filled: trio.Event, lease_ends: datetime) -> bool:
        """Wait until another replica says it stored the key (True) or its lease ends."""
        seconds = min(self._fill_lease, (lease_ends - self._clock()).total_seconds())
        with trio.move_on_after(max(0.0, seconds) + FILL_GRACE_SECONDS):
            await filled.wait()
        return filled.is_set()

    def _answer(self, key: str, entry: CacheEntry) -> Answer:
        return Answer(
            key=key,
            page=entry.page,
            fetched_at=entry.created_at,
            expires_at=entry.expires_at,
            etag=entry.etag,
            encoded=self._encode(key, entry.page),
            body_fetched_at=entry.body_fetched_at,
        )

    async def _ask_upstream(self, key: str, fetch: Fetch, held: Answer | None) -> Answer:
        """One upstream call (with the etag of what we hold), stored in both tiers."""
        body_fetched_at = None if held is None else held.body_fetched_at or held.fetched_at
        conditional = body_fetched_at is not None and self._policy.conditional(
            body_fetched_at, self._clock()
        )
        etag = held.etag if held is not None and conditional else None
        page = await self._breaker.call(lambda: fetch(etag))
        now = self._clock()
        fetched_at = now
        if page is None:  # 304 Not Modified: the upstream confirmed our copy
            if held is None or etag is None:
                raise UpstreamError("upstream answered 304 to a request without an etag")
            # The body stays as old as its last full fetch: etag_max_age counts from there.
            page, fetched_at = held.page, body_fetched_at or now
        expires = self._policy.expires_at(page, now)
        # The put records what changed (events) and drops the other answers it made stale.
        forgotten = await self._store.cache.put(
            key, page, now=now, expires_at=expires, fetched_at=fetched_at
        )
        self._memory.forget(forgotten)
        if self._on_stored is not None:
            self._on_stored()
        answer = Answer(
            key=key,
            page=page,
            fetched_at=now,
            expires_at=expires,
            etag=page.etag,
            encoded=self._encode(key, page),
            body_fetched_at=fetched_at,
        )
        self._memory.put(answer)
        return answer

    async def _join(self, key: str, job: Callable[[], Awaitable[Served]]) -> Served:
        """Wait for the flight under way for ``key``, or start one running ``job``."""
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight()
            self._spawn(self._fly, key, job, flight)  # ShuttingDown leaves no flight behind
            self._flights[key] = flight
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.served is not None
        return flight.served

    async def _fly(self, key: str, job: Callable[[], Awaitable[Served]], flight: _Flight) -> None:
        try:
            flight.served = await job()
        except Exception as exc:
            if not isinstance(exc, UpstreamError):
                log.exception("serving %s failed", key)
            flight.error = exc
        finally:
            if flight.served is None and flight.error is None:  # cancelled: we are stopping
                flight.error = ShuttingDown()
            del self._flights[key]
            flight.done.set()

    def _refresh(self, key: str, fetch: Fetch, held: Answer) -> None:
        """Refresh ``key`` in the background, unless a refresh of it is under way or the
        service is stopping (the stale answer is served all the same)."""
        if key in self._refreshing or self._nursery is None:
            return
        self._refreshing.add(key)

        async def refresh() -> None:
            try:
                await self._fetch_and_keep(key, fetch, held)
            except UpstreamError as exc:
                log.warning("background refresh of %s failed: %s", key, exc)
            except Exception:
                log.exception("background refresh of %s failed", key)
            finally:
                self._refreshing.discard(key)

        self._spawn(refresh)

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Start ``fn`` in the service's nursery; ShuttingDown once ``run`` has ended (the
        gRPC face may still pass on a call while the daemon's nursery winds down)."""
        if self._nursery is None:
            raise ShuttingDown()
        self._nursery.start_soon(fn, *args)

    async def _sweep_forever(self) -> None:
        while True:
            await trio.sleep(self._sweep_interval)
            await self.sweep()

    async def sweep(self) -> int:
        """Remove answers too old to serve even stale, from both tiers."""
        horizon = self._clock() - self._policy.retention
        removed = await self._store.cache.delete_expired(horizon)
        self._memory.forget([k for k, a in self._memory.items() if a.expires_at <= horizon])
        self._metrics.cache_entries.labels(tier=self._store.kind).set(
            await self._store.cache.count()
        )
        return removed


def _one_page(found: tuple[Character, ...]) -> CharacterPage:
    return CharacterPage(
        characters=found,
        offset=0,
        limit=1,
        total=len(found),
        count=len(found),
        attribution_text=ATTRIBUTION,
    )


def _age(now: datetime, since: datetime) -> int:
    return max(0, int((now - since).total_seconds()))
