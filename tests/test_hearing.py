"""A replica that may miss the other replicas' invalidations (its LISTEN connection lost)
serves from the database, not from its memory tier; a copy in memory is served only when
the database cannot be read; listening again clears the memory tier.

The "other replica" is a second store on the same database (the SQLite file or the
PostgreSQL database) that rewrites a cached answer behind the service's back, as another
replica does; the service is real, in front of the real simulator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import trio

from marveld.domain.characters import CharacterPage
from marveld.domain.queries import CharacterQuery
from marveld.services.characters import CacheStatus, CharacterService
from marveld.sim import SimHandle
from marveld.storage import Store
from marveld.storage.coordination import Hearing
from tests.conftest import Clock
from tests.test_characters_shutdown import service_on

QUERY = CharacterQuery.parse(name_starts_with="Hulk")


@pytest.fixture(params=["sqlite", "postgres"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    """How to open the database: the same for the service and the "other replica"."""
    if request.param == "sqlite":
        return {"path": tmp_path / "marveld.db"}
    return {"path": tmp_path / "unused.db", "url": request.getfixturevalue("postgres_url")}


@asynccontextmanager
async def running_service(
    sim: SimHandle, store: Store, clock: Clock
) -> AsyncIterator[CharacterService]:
    async with service_on(sim, store, clock) as service, trio.open_nursery() as nursery:
        await nursery.start(service.run)
        yield service
        nursery.cancel_scope.cancel()


async def rewrite(other: Store, clock: Clock, page: CharacterPage, text: str) -> None:
    """What another replica does: store a newer answer for the same key."""
    first, *rest = page.characters
    newer = CharacterPage(
        characters=(dataclasses.replace(first, description=text), *rest),
        offset=page.offset,
        limit=page.limit,
        total=page.total,
        count=page.count,
        attribution_text=page.attribution_text,
    )
    now = clock()
    await other.cache.put(QUERY.cache_key(), newer, now=now, expires_at=now + timedelta(hours=1))


async def test_while_lost_the_database_is_read_and_listening_again_clears_memory(
    sim: SimHandle, where: dict[str, object], clock: Clock
) -> None:
    async with (
        Store.connect(**where) as store,  # type: ignore[arg-type]
        Store.connect(**where) as other,  # type: ignore[arg-type]
        running_service(sim, store, clock) as service,
    ):
        first = await service.list(QUERY)
        assert (await service.list(QUERY)).status is CacheStatus.HIT  # in memory now
        await rewrite(other, clock, first.page, "Rewritten by another replica.")
        # Listening, the memory tier is trusted: the others would have said.
        assert service.fresh(QUERY.cache_key()) is not None

        service.hearing(Hearing.LOST)
        assert service.fresh(QUERY.cache_key()) is None  # the fast path is closed
        served = await service.list(QUERY)
        assert served.page.characters[0].description == "Rewritten by another replica."

        await rewrite(other, clock, first.page, "Rewritten while not listening.")
        service.hearing(Hearing.LISTENING)  # what was missed is dropped with the tier
        assert service.fresh(QUERY.cache_key()) is None
        served = await service.list(QUERY)
        assert served.page.characters[0].description == "Rewritten while not listening."
        assert sim.state.requests == 1  # every later answer came from a tier


async def test_while_lost_a_copy_in_memory_is_served_when_the_database_fails(
    sim: SimHandle, tmp_path: Path, clock: Clock
) -> None:
    async with (
        Store.open(tmp_path / "marveld.db") as store,
        running_service(sim, store, clock) as service,
    ):
        first = await service.list(QUERY)
        service.hearing(Hearing.LOST)
        await store._db.close()  # the database cannot be read any more
        served = await service.list(QUERY)
        assert served.status is CacheStatus.HIT
        assert served.page == first.page
