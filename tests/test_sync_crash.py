"""A crash in the middle of the first sync: the daemon PROCESS is killed with SIGKILL (no
exception, no cleanup), restarted, and ends with every character stored once and one event
each. Each page is one transaction with its resume offset, so a kill leaves whole pages
and the restart resumes after the last one, under the same run id.

Rules: the simulator runs in the test on port 0 with a latency, so the sync takes a few
seconds; ``python -m marveld serve`` runs as a subprocess on ports 0; waits are for what
the SQLite file shows, bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import trio

from marveld.sim import SimHandle, SimOptions, run_sim
from tests.conftest import PRIVATE_KEY, PUBLIC_KEY, daemon_env
from tests.waiting import wait_until

ROOT = Path(__file__).parents[1]
GENERATED = 1500  # the simulator's generated catalogue: 15 pages of 100


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows from the daemon's database, or [] while it does not exist or is busy."""
    if not db.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
            return [tuple(row) for row in conn.execute(sql)]
    except sqlite3.OperationalError:
        return []


def bootstrap_state(db: Path) -> dict[str, Any] | None:
    rows = query(db, "SELECT value FROM sync_state WHERE key = 'sync.bootstrap'")
    return json.loads(rows[0][0]) if rows else None


def stored(db: Path) -> int:
    rows = query(db, "SELECT count(*) FROM characters")
    return int(rows[0][0]) if rows else 0


async def start_daemon_process(tmp_path: Path, sim: SimHandle, run: int) -> trio.Process:
    env = {**os.environ, **daemon_env(tmp_path, sim.url), "MARVELD_POLLER_ENABLED": "true"}
    config = tmp_path / "marveld.toml"
    config.touch()
    log = (tmp_path / f"daemon-{run}.log").open("wb")
    try:
        return await trio.lowlevel.open_process(
            [sys.executable, "-m", "marveld", "serve", "--config", str(config)],
            env=env,
            cwd=ROOT,
            stderr=log,
        )
    finally:
        log.close()


async def kill_mid_sync(tmp_path: Path, sim: SimHandle, run: int) -> None:
    """Start the daemon, SIGKILL it once it has stored 200 more characters."""
    db = tmp_path / "marveld.db"
    target = stored(db) + 200
    proc = await start_daemon_process(tmp_path, sim, run)
    try:
        await wait_until(
            lambda: stored(db) >= target, seconds=30, what=f"run {run} storing characters"
        )
    finally:
        proc.kill()  # SIGKILL: no cleanup, no exception handler runs
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL


async def test_a_killed_first_sync_resumes_and_stores_everything_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    sim: SimHandle = await nursery.start(
        run_sim, SimOptions(public_key=PUBLIC_KEY, private_key=PRIVATE_KEY, latency_ms=120)
    )
    db = tmp_path / "marveld.db"

    for run in (1, 2):  # killed twice, mid-sync, at different points
        await kill_mid_sync(tmp_path, sim, run)
        state = bootstrap_state(db)
        assert state is not None
        assert state["completed_at"] is None, "the sync finished before the kill"
        assert 0 < stored(db) < GENERATED

    proc = await start_daemon_process(tmp_path, sim, 3)
    try:
        await wait_until(
            lambda: (bootstrap_state(db) or {}).get("completed_at") is not None,
            seconds=30,
            what="the resumed sync completing",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            await proc.wait()
    assert proc.returncode == 0, (tmp_path / "daemon-3.log").read_text()

    state = bootstrap_state(db)
    assert state is not None
    assert query(db, "SELECT count(*), count(DISTINCT marvel_id) FROM characters") == [
        (GENERATED, GENERATED)
    ]
    assert query(db, "SELECT count(*), count(DISTINCT stream_id) FROM events") == [
        (GENERATED, GENERATED)
    ]
    # One run, resumed twice: every event is its bulk CharacterAdded.
    assert query(db, "SELECT DISTINCT type, correlation_id FROM events") == [
        ("CharacterAdded", f"bootstrap:{state['run_id']}")
    ]
    assert query(db, "SELECT count(*) FROM character_reads") == [(GENERATED,)]
    spiders = "SELECT count(*) FROM character_search WHERE character_search MATCH 'spider'"
    assert query(db, spiders)[0][0] > 0
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    # seq has no gaps: no transaction was half applied.
    assert query(db, "SELECT min(seq), max(seq) FROM events") == [(1, GENERATED)]
