"""Characters through the two-tier cache: memory (LRU), then SQLite, then the upstream.

Policies (DESIGN §5): a fresh TTL; stale-while-revalidate (serve the stale answer and
refresh it once in the background); stale-if-error (serve it when the upstream fails or
the budget is spent); a short TTL for empty answers; errors never cached. Concurrent misses
for one key share one upstream call (single-flight): the call runs in this service's own
nursery, so a caller that gives up does not cancel it for the others.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import trio

from marveld.domain.cache_policy import CachePolicy, Freshness
from marveld.domain.characters import Character, CharacterPage
from marveld.domain.errors import InvalidArgument, NotFound, UpstreamError
from marveld.domain.queries import CharacterQuery, check_character_id
from marveld.metrics import Metrics
from marveld.services.guard import CircuitBreaker
from marveld.services.memory_tier import Answer, MemoryTier
from marveld.storage import Store
from marveld.upstream import MarvelClient

log = logging.getLogger(__name__)

ATTRIBUTION = "Data provided by Marvel. © 2026 MARVEL"

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
    """One upstream call that every concurrent miss of its key waits for."""

    done: trio.Event = field(default_factory=trio.Event)
    answer: Answer | None = None
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
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._breaker = breaker
        self._memory = memory
        self._metrics = metrics
        self._clock = clock
        self._policy = policy
        self._encode = encode
        self._sweep_interval = sweep_interval
        self._flights: dict[str, _Flight] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The nursery for upstream calls and refreshes, and the sweeper of old entries."""
        self._metrics.cache_entries.labels(tier="memory").set_function(lambda: len(self._memory))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.sweep()
            nursery.start_soon(self._sweep_forever)
            task_status.started()

    # --- the fast path: plain synchronous code, no awaits ------------------------------------

    def fresh(self, key: str) -> tuple[Answer, int] | None:
        """A fresh answer from the memory tier and its age, or None (then call the async
        methods). Cheap enough for the gRPC face to call before it enters trio."""
        answer = self._memory.get(key)
        if answer is None:
            return None
        now = self._clock()
        if now >= answer.expires_at:
            return None
        self._metrics.cache_result("memory", "hit")
        return answer, _age(now, answer.fetched_at)

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

        async def fetch(etag: str | None) -> CharacterPage:
            try:
                found: tuple[Character, ...] = (await self._upstream.get_character(marvel_id),)
            except NotFound:
                found = ()
            return CharacterPage(
                characters=found,
                offset=0,
                limit=1,
                total=len(found),
                count=len(found),
                attribution_text=ATTRIBUTION,
            )

        served = await self._serve(character_key(marvel_id), fetch)
        if not served.page.characters:
            raise NotFound(f"character {marvel_id} not found")
        return served

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

    def forget(self, keys: Iterable[str]) -> None:
        """Drop these keys from the memory tier (the SQLite rows are gone already)."""
        self._memory.forget(keys)

    # --- the read-through ------------------------------------------------------------------------

    async def _serve(self, key: str, fetch: Fetch) -> Served:
        now = self._clock()
        answer = self._memory.get(key)
        tier = "memory"
        if answer is None:
            self._metrics.cache_result("memory", "miss")
            tier = "sqlite"
            entry = await self._store.cache.get(key)
            if entry is not None:
                answer = Answer(
                    key=key,
                    page=entry.page,
                    fetched_at=entry.created_at,
                    expires_at=entry.expires_at,
                    etag=entry.etag,
                    encoded=self._encode(key, entry.page),
                )
                self._memory.put(answer)
        freshness = self._policy.freshness(answer.expires_at, now) if answer else None
        if answer is not None and freshness is Freshness.FRESH:
            self._metrics.cache_result(tier, "hit")
            return Served(answer, CacheStatus.HIT, _age(now, answer.fetched_at))
        if answer is not None and freshness is Freshness.REVALIDATE:
            self._metrics.cache_result(tier, "stale")
            self._flight(key, fetch, answer)  # refresh in the background, once
            return Served(answer, CacheStatus.STALE, _age(now, answer.fetched_at))
        if tier == "sqlite":
            self._metrics.cache_result("sqlite", "miss")
        try:
            fetched = await self._wait(self._flight(key, fetch, answer))
        except UpstreamError as exc:
            if answer is None or freshness is not Freshness.IF_ERROR:
                raise
            log.warning("serving stale %s: %s", key, exc)
            self._metrics.cache_result(tier, "stale")
            return Served(answer, CacheStatus.STALE, _age(now, answer.fetched_at))
        return Served(fetched, CacheStatus.MISS, 0)

    def _flight(self, key: str, fetch: Fetch, previous: Answer | None) -> _Flight:
        """The upstream call under way for ``key``, or a new one."""
        flight = self._flights.get(key)
        if flight is None:
            if self._nursery is None:
                raise RuntimeError("CharacterService.run() is not running")
            flight = self._flights[key] = _Flight()
            self._nursery.start_soon(self._fly, key, fetch, previous, flight)
        return flight

    @staticmethod
    async def _wait(flight: _Flight) -> Answer:
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.answer is not None
        return flight.answer

    async def _fly(self, key: str, fetch: Fetch, previous: Answer | None, flight: _Flight) -> None:
        try:
            etag = previous.etag if previous is not None else None
            page = await self._breaker.call(lambda: fetch(etag))
            if page is None:  # 304 Not Modified: the upstream confirmed our copy
                if previous is None:
                    raise UpstreamError("upstream answered 304 to a request without an etag")
                page = previous.page
            now = self._clock()
            expires = self._policy.expires_at(page, now)
            await self._store.cache.put(key, page, now=now, expires_at=expires)
            flight.answer = Answer(
                key=key,
                page=page,
                fetched_at=now,
                expires_at=expires,
                etag=page.etag,
                encoded=self._encode(key, page),
            )
            self._memory.put(flight.answer)
        except Exception as exc:
            if not isinstance(exc, UpstreamError):
                log.exception("fetching %s failed", key)
            flight.error = exc
        finally:
            del self._flights[key]
            flight.done.set()

    async def _sweep_forever(self) -> None:
        while True:
            await trio.sleep(self._sweep_interval)
            await self.sweep()

    async def sweep(self) -> int:
        """Remove answers too old to serve even stale, from both tiers."""
        horizon = self._clock() - self._policy.retention
        removed = await self._store.cache.delete_expired(horizon)
        self._memory.forget([k for k, a in self._memory.items() if a.expires_at <= horizon])
        self._metrics.cache_entries.labels(tier="sqlite").set(await self._store.cache.count())
        return removed


def _age(now: datetime, since: datetime) -> int:
    return max(0, int((now - since).total_seconds()))
