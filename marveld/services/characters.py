"""Characters through the read-through cache: the SQLite ``cache`` table, then the upstream."""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from marveld.domain.characters import ATTRIBUTION, Character, CharacterPage
from marveld.domain.errors import InvalidArgument, UpstreamError
from marveld.domain.queries import CharacterQuery, SearchQuery
from marveld.metrics import Metrics
from marveld.services.catalog import LocalCatalog
from marveld.storage import Store
from marveld.upstream import MarvelClient

log = logging.getLogger(__name__)

TIER = "sqlite"


class CacheStatus(enum.Enum):
    HIT = "hit"
    MISS = "miss"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class ServedPage:
    """A page and where it came from: the cache (fresh or stale) or the upstream just now."""

    page: CharacterPage
    status: CacheStatus
    age_seconds: int


class CharacterService:
    def __init__(
        self,
        store: Store,
        upstream: MarvelClient,
        metrics: Metrics,
        clock: Callable[[], datetime],
        *,
        ttl_seconds: float,
        catalog: LocalCatalog | None = None,
    ) -> None:
        self._catalog = catalog  # local gets and searches once the first sync is done
        self._store = store
        self._upstream = upstream
        self._metrics = metrics
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_seconds)

    async def list(self, query: CharacterQuery) -> ServedPage:
        """Marvel's ``GET /characters`` for a validated query, through the cache."""
        params = query.upstream_params()

        async def fetch(etag: str | None) -> CharacterPage | None:
            return await self._upstream.list_characters(params, etag=etag)

        return await self._read_through(query.cache_key(), fetch)

    async def get(self, marvel_id: int) -> Character:
        """One character by Marvel's id; NotFound when the upstream has none."""
        if marvel_id <= 0:
            raise InvalidArgument("id", "must be a positive Marvel character id")
        if self._catalog is not None and await self._catalog.is_synced():
            local = await self._catalog.get(marvel_id)
            if local is not None:
                return local  # else new upstream and not synced yet: read through

        async def fetch(etag: str | None) -> CharacterPage | None:
            character = await self._upstream.get_character(marvel_id)
            return CharacterPage(
                characters=(character,),
                offset=0,
                limit=1,
                total=1,
                count=1,
                attribution_text=ATTRIBUTION,
            )

        served = await self._read_through(f"characters/{marvel_id}", fetch)
        return served.page.characters[0]

    async def search(self, query: SearchQuery) -> ServedPage:
        """Free-text search: local full-text once synced, else a name prefix upstream."""
        if self._catalog is not None and await self._catalog.is_synced():
            page = await self._catalog.search(query)
            return ServedPage(page, CacheStatus.HIT, await self._catalog.age_seconds())
        return await self.list(query.upstream_query())

    async def _read_through(
        self, key: str, fetch: Callable[[str | None], Awaitable[CharacterPage | None]]
    ) -> ServedPage:
        now = self._clock()
        entry = await self._store.cache.get(key)
        if entry is not None and entry.expires_at > now:
            self._metrics.cache_result(TIER, "hit")
            return ServedPage(entry.page, CacheStatus.HIT, _age(now, entry.created_at))
        try:
            fetched = await fetch(entry.etag if entry is not None else None)
        except UpstreamError as exc:
            if entry is None:
                raise
            log.warning("serving stale %s: %s", key, exc)
            self._metrics.cache_result(TIER, "stale")
            return ServedPage(entry.page, CacheStatus.STALE, _age(now, entry.created_at))
        if fetched is None:  # 304 Not Modified: the upstream confirmed our copy
            if entry is None:
                raise UpstreamError("upstream answered 304 to a request without an etag")
            fetched = entry.page
        await self._store.cache.put(key, fetched, now=now, expires_at=now + self._ttl)
        self._metrics.cache_result(TIER, "miss")
        return ServedPage(fetched, CacheStatus.MISS, 0)


def _age(now: datetime, since: datetime) -> int:
    return max(0, int((now - since).total_seconds()))
