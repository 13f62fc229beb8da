"""Local reads from the read model, once the first full sync has filled it.

``GetCharacter`` and ``SearchCharacters`` are answered here once :meth:`is_synced`; a
character missing locally (new upstream, not synced yet) is still read through from the
upstream by the caller. ``ListCharacters`` stays a read-through cache of upstream pages,
kept right by the invalidation each change does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from marveld.domain.characters import ATTRIBUTION, Character, CharacterPage
from marveld.domain.queries import SearchQuery
from marveld.storage import Store
from marveld.storage.sync_state import LAST_COMPLETED

log = logging.getLogger(__name__)


class LocalCatalog:
    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock
        self._synced = False  # once true, stays true: the first sync completes once

    @property
    def synced(self) -> bool:
        """What :meth:`is_synced` last found, without asking the store (for fast paths)."""
        return self._synced

    async def is_synced(self) -> bool:
        """True once the first full sync has completed."""
        if not self._synced:
            self._synced = await self._store.sync_state.first_sync_done()
            if self._synced:
                log.info("first full sync done: gets and searches are answered locally")
        return self._synced

    async def get(self, marvel_id: int) -> Character | None:
        return await self._store.reads.get(marvel_id)

    async def search(self, query: SearchQuery) -> CharacterPage:
        """Full-text search over names and descriptions; every term must match, as a word
        prefix; best matches (name hits first) first."""
        found = await self._store.reads.search(query.terms, limit=query.limit, offset=query.offset)
        return CharacterPage(
            characters=found.characters,
            offset=query.offset,
            limit=query.limit,
            total=found.total,
            count=len(found.characters),
            attribution_text=ATTRIBUTION,
        )

    async def age_seconds(self) -> int:
        """Seconds since the last sync that ended well (the local data is at least that
        fresh; webhooks keep it fresher)."""
        completed = await self._store.sync_state.get(LAST_COMPLETED)
        if not completed:
            return 0
        since = datetime.fromisoformat(completed["at"])
        return max(0, int((self._clock() - since).total_seconds()))
