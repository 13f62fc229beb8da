"""What the reliability suite's fault matrix found, pinned as tests against the real
simulator's injected faults (``marveld/sim/faults.py``):

- a body that trickles in is bounded by ``upstream.timeout`` as a whole, not per read;
- a 200 that is not JSON by its content type (a captive portal's page) is an unusable
  answer, retried once, never parsed into a character;
- an upstream whose 304s lie keeps an old page alive only for ``upstream.etag_max_age``:
  then the cache and the poller ask unconditionally and get the change.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from contextlib import AbstractAsyncContextManager, closing
from pathlib import Path

import pytest
import trio

from marveld.domain.errors import UpstreamError
from marveld.metrics import Metrics
from marveld.services.sync import SyncService
from marveld.sim import SimHandle
from marveld.sim.faults import Fault
from marveld.storage import Store
from marveld.upstream import MarvelClient, RetryPolicy
from tests.calls import list_characters, register_and_login
from tests.conftest import PRIVATE_KEY, PUBLIC_KEY, Clock, running_daemon

SPIDER_MAN = 1009610
TWO_TRIES = RetryPolicy(max_attempts=2, backoff_initial=0.001, backoff_max=0.01)


def client(
    sim: SimHandle, outcomes: list[str], timeout: float = 5.0
) -> AbstractAsyncContextManager[MarvelClient]:
    return MarvelClient.open(
        base_url=sim.url,
        public_key=PUBLIC_KEY,
        private_key=PRIVATE_KEY,
        timeout=timeout,
        retry=TWO_TRIES,
        on_request=lambda outcome, _: outcomes.append(outcome),
    )


async def test_a_trickling_body_times_out_as_a_whole_and_the_retry_succeeds(
    sim: SimHandle,
) -> None:
    # Ten pieces 0.3 s apart: each read is quick, the whole answer takes 3 s > 1 s.
    sim.state.plan.script.append(Fault.SLOW_BODY)
    sim.state.plan.slow_seconds = 3.0
    outcomes: list[str] = []
    async with client(sim, outcomes, timeout=1.0) as marvel:
        character = await marvel.get_character(SPIDER_MAN)
    assert character.id == SPIDER_MAN
    assert outcomes == ["timeout", "ok"]


async def test_a_page_that_is_not_json_is_refused_by_its_content_type(sim: SimHandle) -> None:
    sim.state.plan.rates[Fault.WRONG_TYPE] = 1.0
    outcomes: list[str] = []
    async with client(sim, outcomes) as marvel:
        with pytest.raises(UpstreamError, match="content-type text/html, not JSON"):
            await marvel.get_character(SPIDER_MAN)
    assert outcomes == ["malformed", "malformed"]  # retried once: a proxy may have been wrong


async def test_a_lying_etag_keeps_a_cached_page_only_for_etag_max_age(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock
) -> None:
    env = {
        "MARVELD_CACHE_TTL": "60s",
        "MARVELD_CACHE_STALE_WHILE_REVALIDATE": "1s",
        "MARVELD_UPSTREAM_ETAG_MAX_AGE": "100s",
    }
    async with running_daemon(nursery, sim, tmp_path, clock, **env) as m:
        auth = await register_and_login(m)
        first = await list_characters(m, auth, name="Spider-Man (Peter Parker)")
        old = first.characters[0].description
        sim.editor.update(SPIDER_MAN, {"description": "changed upstream"}, notify=False)
        sim.state.plan.rates[Fault.LYING_ETAG] = 1.0

        clock.advance(62)  # expired, past revalidation: asked with the etag, told 304
        lied = await list_characters(m, auth, name="Spider-Man (Peter Parker)")
        assert lied.characters[0].description == old
        assert lied.cache_age_seconds == 0  # the upstream confirmed it just now
        assert sim.state.plan.injected[Fault.LYING_ETAG.value] == 1

        clock.advance(62)  # expired again; the body is 124 s old > etag_max_age
        fixed = await list_characters(m, auth, name="Spider-Man (Peter Parker)")
        assert fixed.characters[0].description == "changed upstream"
        assert sim.state.plan.injected[Fault.LYING_ETAG.value] == 1  # no etag was sent


async def test_a_lying_etag_hides_a_change_from_the_poll_only_for_etag_max_age(
    sim: SimHandle, tmp_path: Path, clock: Clock
) -> None:
    def forget(keys: Collection[str]) -> None:
        pass

    async with (
        Store.open(tmp_path / "marveld.db") as store,
        MarvelClient.open(
            base_url=sim.url, public_key=PUBLIC_KEY, private_key=PRIVATE_KEY, retry=TWO_TRIES
        ) as marvel,
    ):
        sync = SyncService(store, marvel, Metrics(), clock, forget, etag_max_age=3600.0)
        await sync.run_once()  # the first full sync
        await sync.run_once()  # a poll: keeps the first page's etag
        sim.editor.update(SPIDER_MAN, {"description": "changed upstream"}, notify=False)
        sim.state.plan.rates[Fault.LYING_ETAG] = 1.0

        clock.advance(600)
        hidden = await sync.run_once()
        assert hidden.not_modified  # the lie is believed while the etag is young

        clock.advance(3600)
        found = await sync.run_once()
        assert (found.not_modified, found.updated) == (False, 1)
        with closing(sqlite3.connect(store.path)) as conn:
            (description,) = conn.execute(
                "SELECT description FROM characters WHERE marvel_id = ?", (SPIDER_MAN,)
            ).fetchone()
        assert description == "changed upstream"
