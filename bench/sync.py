"""Change detection: the first full sync, an unchanged poll, and 1,000 changes applied.

Starts ``marveld sim`` as a subprocess (the recorded 1,561 characters when
``../shared/data/marvel/characters.json`` is there, else the generated 1,500) and runs
marveld's sync service in this process against it, on a fresh SQLite file:

- bootstrap: upstream calls, and local seconds beyond the simulator's time = wall time
  minus the time the simulator takes to answer the same pages (replayed afterwards with a
  bare HTTP client, bodies read but not parsed);
- a poll with nothing changed, twice (the second one answered 304);
- 1,000 changed characters applied in one batch (one transaction: characters, events,
  read table and FTS, cache invalidation against 500 cached pages);
- a poll that picks up 1,000 changes made in the simulator without webhooks.

Prints a table and writes bench/results/sync.json. Figures, not pass/fail.

    .venv/bin/python -m bench.sync
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.harness import free_port, wait_until_up
from marveld.domain.changes import Provenance
from marveld.domain.characters import ATTRIBUTION, Character, CharacterPage
from marveld.domain.queries import CharacterQuery
from marveld.metrics import Metrics
from marveld.services.sync import SyncReport, SyncService
from marveld.sim import marvel_hash
from marveld.storage import Store
from marveld.upstream import MarvelClient

RESULTS = Path(__file__).parent / "results"
RECORDED = Path(__file__).parents[2] / "shared" / "data" / "marvel" / "characters.json"
PUBLIC, PRIVATE = "bench-public", "bench-private"
CHANGES = 1000
CACHED_PAGES = 500


@contextmanager
def simulator(dataset: Path | None) -> Iterator[str]:
    """``marveld sim`` in a subprocess; yields its API root URL."""
    port = free_port()
    env = {**os.environ, "MARVEL_PUBLIC_KEY": PUBLIC, "MARVEL_PRIVATE_KEY": PRIVATE}
    argv = [sys.executable, "-m", "marveld", "sim", "--port", str(port)]
    if dataset is not None:
        argv += ["--dataset", str(dataset)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, env=env, stderr=log)
        try:
            wait_until_up(f"http://127.0.0.1:{port}/_sim/stats")
            yield f"http://127.0.0.1:{port}/v1/public"
        finally:
            proc.terminate()
            proc.wait(10)


@dataclass
class Upstream:
    """What the client saw: one entry per HTTP attempt."""

    outcomes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __call__(self, outcome: str, seconds: float) -> None:
        self.outcomes.append(outcome)
        self.seconds += seconds

    def mark(self) -> tuple[int, float]:
        return len(self.outcomes), self.seconds


def utc_now() -> datetime:
    return datetime.now(UTC)


def forget(keys: Collection[str]) -> None:
    """The memory tier would drop these."""


async def timed_sync(sync: SyncService, upstream: Upstream) -> dict[str, Any]:
    calls, waited = upstream.mark()
    started = time.perf_counter()
    report: SyncReport = await sync.run_once()
    wall = time.perf_counter() - started
    upstream_seconds = upstream.seconds - waited
    return {
        "kind": report.kind,
        "calls": len(upstream.outcomes) - calls,
        "outcomes": sorted(set(upstream.outcomes[calls:])),
        "added": report.added,
        "updated": report.updated,
        "wall_s": wall,
        "upstream_s": upstream_seconds,
        "local_s": wall - upstream_seconds,
    }


async def replay_bootstrap(base_url: str, total: int) -> float:
    """Seconds the simulator takes to answer the bootstrap's pages, body read but not
    parsed: the upstream's share of a bootstrap."""
    seconds = 0.0
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        for offset in range(0, total, 100):
            ts = str(time.time())
            params = {
                "orderBy": "modified",
                "limit": "100",
                "offset": str(offset),
                "ts": ts,
                "apikey": PUBLIC,
                "hash": marvel_hash(ts, PRIVATE, PUBLIC),
            }
            started = time.perf_counter()
            r = await http.get("/characters", params=params)
            r.raise_for_status()
            seconds += time.perf_counter() - started
    return seconds


async def fill_cache(store: Store, characters: list[Character]) -> None:
    """500 cached pages: name-prefix lists over the catalogue and single characters."""
    now = utc_now()
    prefixes = sorted({c.name[:3] for c in characters})
    for n in range(CACHED_PAGES):
        page_characters: tuple[Character, ...]
        if n % 2:
            chosen = characters[n % len(characters)]
            key, page_characters = f"characters/{chosen.id}", (chosen,)
        else:
            prefix = prefixes[(n // 2) % len(prefixes)]
            key = CharacterQuery.parse(name_starts_with=prefix, offset=n).cache_key()
            page_characters = tuple(c for c in characters if c.name.startswith(prefix))[:20]
        count = len(page_characters)
        page = CharacterPage(page_characters, 0, 20, count, count, ATTRIBUTION)
        await store.cache.put(key, page, now=now, expires_at=now)


async def measure(base_url: str, tmp: Path) -> dict[str, Any]:
    upstream = Upstream()
    figures: dict[str, Any] = {}
    async with (
        Store.open(tmp / "bench.db") as store,
        MarvelClient.open(
            base_url=base_url, public_key=PUBLIC, private_key=PRIVATE, on_request=upstream
        ) as marvel,
    ):
        sync = SyncService(store, marvel, Metrics(), utc_now, forget)
        boot = await timed_sync(sync, upstream)
        boot["simulator_s"] = await replay_bootstrap(base_url, boot["added"])
        boot["local_beyond_simulator_s"] = boot["wall_s"] - boot["simulator_s"]
        figures["bootstrap"] = boot
        figures["poll_unchanged_first"] = await timed_sync(sync, upstream)
        figures["poll_unchanged"] = await timed_sync(sync, upstream)

        # 1,000 changed characters applied in one batch, 500 cached pages to check.
        stored = [await store.reads.get(i) for i in _ids(tmp / "bench.db")]
        characters = [c for c in stored if c is not None]
        await fill_cache(store, characters)
        changed = [
            Character.from_json({**c.to_json(), "description": f"Changed: {c.description}"})
            for c in characters[:CHANGES]
        ]
        started = time.perf_counter()
        result = await sync.apply(changed, Provenance(source="bench", correlation_id="bench:apply"))
        figures["apply_1000"] = {
            "changed": result.changed,
            "events": len(result.events),
            "cache_entries_invalidated": len(result.forgotten),
            "seconds": time.perf_counter() - started,
        }

        # 1,000 changes made upstream without webhooks, picked up by one poll.
        async with httpx.AsyncClient(base_url=base_url.removesuffix("/v1/public")) as http:
            for c in characters[:CHANGES]:
                r = await http.post(
                    f"/_sim/characters/{c.id}",
                    params={"webhook": "false"},
                    json={"description": f"Upstream change of {c.name}"},
                )
                r.raise_for_status()
        figures["poll_1000_changes"] = await timed_sync(sync, upstream)
    return figures


def _ids(db: Path) -> list[int]:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return [row[0] for row in conn.execute("SELECT marvel_id FROM character_reads")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=RECORDED if RECORDED.is_file() else None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, simulator(args.dataset) as base_url:
        figures = trio.run(measure, base_url, Path(tmp))
    source = str(args.dataset) if args.dataset else "generated catalogue (1,500)"
    boot, quiet, again = (
        figures["bootstrap"],
        figures["poll_unchanged_first"],
        figures["poll_unchanged"],
    )
    apply, busy = figures["apply_1000"], figures["poll_1000_changes"]
    print(f"Change detection against marveld sim ({source}), SQLite on a temp dir")
    print("local s: wall time minus upstream time (the simulator's, for the bootstrap)")
    print(f"{'':38} {'calls':>6} {'local s':>8} {'upstream s':>11} {'target':>16}")
    print(
        f"{'bootstrap (' + str(boot['added']) + ' added)':38} {boot['calls']:>6}"
        f" {boot['local_beyond_simulator_s']:>8.3f} {boot['simulator_s']:>11.3f}"
        f" {'<= 17 calls, 3 s':>16}"
    )
    for label, row in (("poll, nothing changed (1st)", quiet), ("poll, nothing changed", again)):
        shown = f"{label} [{','.join(row['outcomes'])}]"
        print(
            f"{shown:38} {row['calls']:>6} {row['local_s']:>8.3f} {row['upstream_s']:>11.3f}"
            f" {'1 call':>16}"
        )
    print(
        f"{'apply 1,000 changed characters':38} {'-':>6} {apply['seconds']:>8.3f} {'-':>11}"
        f" {'<= 1 s':>16}"
    )
    print(f"{'':38} ({apply['events']} events, {apply['cache_entries_invalidated']} cache entries)")
    print(
        f"{'poll, 1,000 changed upstream':38} {busy['calls']:>6} {busy['local_s']:>8.3f}"
        f" {busy['upstream_s']:>11.3f} {'':>16}"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "sync.json"
    out.write_text(
        json.dumps({"measured_at": time.time(), "dataset": source, **figures}, indent=2) + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
