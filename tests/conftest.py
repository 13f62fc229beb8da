"""Test rules: loopback only, port 0 everywhere, real servers started with ``nursery.start``
(which returns once they serve), a time bound on every test (pytest-timeout, pyproject.toml),
no sleeps to wait for readiness, no mocks of marveld's own code."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest
import trio

from marveld import daemon
from marveld.config import Settings, load_settings
from marveld.services.security import PasswordHasher
from marveld.sim import SimHandle, SimOptions, run_sim
from marveld.storage import Store
from tests import postgres
from tests.aio import AioClient, grpc_client

FIXTURES = Path(__file__).parent / "fixtures" / "marvel"
RECORDED_SLICE = FIXTURES / "characters.json"
PUBLIC_KEY = "test-public-key"
PRIVATE_KEY = "test-private-key"
JWT_SECRET = "test-jwt-secret-that-is-at-least-32-bytes-long"
GENEROUS = 1_000_000
GENEROUS_LIMITS = (
    "USER_RATE", "USER_BURST", "ANONYMOUS_RATE", "ANONYMOUS_BURST", "LOGIN_FAILURES",
    "ADDRESS_LOGIN_FAILURES",
)  # fmt: skip


def daemon_env(tmp_path: Path, upstream_url: str) -> dict[str, str]:
    """The environment of a daemon under test: free ports, a temp database, fast retries,
    no background sync."""
    return {
        "MARVEL_PUBLIC_KEY": PUBLIC_KEY,
        "MARVEL_PRIVATE_KEY": PRIVATE_KEY,
        "MARVELD_JWT_SECRET": JWT_SECRET,
        "MARVELD_GRPC_LISTEN": "127.0.0.1:0",
        "MARVELD_HTTP_LISTEN": "127.0.0.1:0",
        "MARVELD_DATABASE_PATH": str(tmp_path / "marveld.db"),
        "MARVELD_UPSTREAM_URL": upstream_url,
        "MARVELD_UPSTREAM_TIMEOUT": "5s",
        "MARVELD_UPSTREAM_MAX_ATTEMPTS": "2",
        "MARVELD_UPSTREAM_BACKOFF_INITIAL": "0.01",
        "MARVELD_UPSTREAM_BACKOFF_MAX": "0.02",
        # Limits no test reaches but the ones about limits, which set their own.
        **{f"MARVELD_RATELIMIT_{name}": str(GENEROUS) for name in GENEROUS_LIMITS},
        # No background sync: tests that need one turn it on or trigger it.
        "MARVELD_POLLER_ENABLED": "false",
    }


def make_settings(tmp_path: Path, upstream_url: str, **overrides: str) -> Settings:
    config = tmp_path / "marveld.toml"
    config.touch()
    env = {**daemon_env(tmp_path, upstream_url), **overrides}
    if "MARVELD_DATABASE_URL" in overrides:  # PostgreSQL: no SQLite path beside it
        env.pop("MARVELD_DATABASE_PATH")
    return load_settings(config, env)


# argon2id at OWASP's parameters costs tens of ms a hash; tests that are not about hashing
# use a cheap hasher so the suite stays fast.
FAST_HASHER = PasswordHasher(memory_kib=1024, time_cost=1)


@pytest.fixture
async def sim(nursery: trio.Nursery) -> SimHandle:
    """The simulator on a free port, serving the recorded slice of real Marvel data."""
    handle: SimHandle = await nursery.start(
        run_sim,
        SimOptions(dataset=RECORDED_SLICE, public_key=PUBLIC_KEY, private_key=PRIVATE_KEY),
    )
    return handle


@dataclass
class Running:
    settings: Settings
    endpoints: daemon.Endpoints
    sim: SimHandle
    client: AioClient

    @property
    def tier(self) -> str:
        """The database tier's metric label."""
        return "sqlite" if self.settings.database.url is None else "postgresql"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.endpoints.http_port}"

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{self.http}/metrics")).text


class Clock:
    """A clock tests move by hand; it starts at the real time (tokens check the wall clock).
    :meth:`monotonic` is the same clock as monotonic seconds, for the rate limiters."""

    def __init__(self) -> None:
        self.now = self._start = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return (self.now - self._start).total_seconds()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def start_daemon(
    nursery: trio.Nursery, settings: Settings, clock: Clock | None = None
) -> daemon.Endpoints:
    """``daemon.run`` in ``nursery``; returns once it serves, with its real ports."""
    clock = clock or Clock()
    endpoints: daemon.Endpoints = await nursery.start(
        partial(daemon.run, settings, hasher=FAST_HASHER, clock=clock, monotonic=clock.monotonic)
    )
    return endpoints


@pytest.fixture
def clock() -> Clock:
    return Clock()


@asynccontextmanager
async def running_daemon(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, **env: str
) -> AsyncIterator[Running]:
    """A daemon in front of ``sim`` with settings ``env`` (MARVELD_* variables) and a
    grpclib client connected to it."""
    settings = make_settings(tmp_path, sim.url, **env)
    endpoints = await start_daemon(nursery, settings, clock)
    async with grpc_client(endpoints.grpc_port) as client:
        yield Running(settings, endpoints, sim, client)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that use ``database`` run on SQLite, and on PostgreSQL too in modules (or for
    tests) marked ``both_backends``: the service tests."""
    if "database" in metafunc.fixturenames:
        both = metafunc.definition.get_closest_marker("both_backends") is not None
        backends = ["sqlite", "postgres"] if both else ["sqlite"]
        metafunc.parametrize("database", backends, indirect=True)


@pytest.fixture
def database(request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings (MARVELD_* variables) that choose a daemon's database: none for SQLite
    (``daemon_env``'s temp file), a fresh PostgreSQL database (``postgres_url``) else."""
    if request.param == "sqlite":
        return {}
    return {"MARVELD_DATABASE_URL": request.getfixturevalue("postgres_url")}


@pytest.fixture
async def marveld(
    nursery: trio.Nursery, sim: SimHandle, tmp_path: Path, clock: Clock, database: dict[str, str]
) -> AsyncIterator[Running]:
    """A running daemon in front of the simulator (cache TTL 60 s), and a client."""
    async with running_daemon(
        nursery, sim, tmp_path, clock, MARVELD_CACHE_TTL="60s", **database
    ) as m:
        yield m


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for this session (tests/postgres.py): the one named
    by MARVELD_TEST_POSTGRES_URL, else a throwaway cluster started here. Skips when there
    is none to be had, with the reason; under CI (``CI`` set) fails instead."""
    url = os.environ.get(postgres.URL_VARIABLE)
    cluster = None
    if not url:
        try:
            cluster = postgres.Cluster.start(Path(tempfile.mkdtemp(prefix="marveld-pg-")))
        except postgres.Unavailable as exc:
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL tests must run under CI: {exc}")
            pytest.skip(f"PostgreSQL: {exc}")
        url = cluster.url
    try:
        postgres.make_template(url)
        yield url
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh database at the latest schema, cloned from the session's template, dropped
    after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {postgres.TEMPLATE}")
    try:
        yield postgres.with_database(postgres_server, name)
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the SQLite store of a test lives."""
    return tmp_path / "marveld.sqlite3"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, db_path: Path) -> AsyncIterator[Store]:
    """An open store on each backend: SQLite at ``db_path``, and a fresh PostgreSQL
    database (``postgres_url``). Tests of one backend's internals open their own."""
    if request.param == "sqlite":
        async with Store.open(db_path) as opened:
            yield opened
    else:
        async with Store.open_url(request.getfixturevalue("postgres_url")) as opened:
            yield opened
