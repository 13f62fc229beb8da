"""``make cluster`` (tools/cluster.py) as a newcomer runs it: ``up``, use it through
HAProxy, ``down``, ``up`` again and find everything there, ``down``.

Rules: loopback only; the cluster's ports are a block found free at the start
(``--ports-from``); every run of the tool has a time limit, and a cluster left running by a
failure is stopped on the way out. HAProxy missing: the test skips with one line, and fails
under CI (``CI`` set), as the PostgreSQL tests do for PostgreSQL. Where the session has a
server (MARVELD_TEST_POSTGRES_URL: CI's sandboxed run, which may not switch users), the
cluster uses a fresh database on it; else the tool starts its own PostgreSQL in the folder,
and the test skips (fails under CI) when it cannot."""

from __future__ import annotations

import os
import random
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests import calls, postgres
from tests.aio import grpc_client
from tools import cluster as tool

ROOT = Path(__file__).parents[1]
RUN_SECONDS = 120  # one `up` (the first one makes the PostgreSQL cluster) or `down`
EMAIL = "newcomer@example.com"

pytestmark = pytest.mark.timeout(4 * RUN_SECONDS)


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"must run under CI: {reason}")
    pytest.skip(reason)


def need_haproxy() -> None:
    if tool.find_haproxy(None) is None:
        unavailable("HAProxy is not installed (Debian: apt-get install haproxy)")


def free_block() -> int:
    """A base port with tool.PORT_BLOCK free ports from it, below the ephemeral range."""
    for _ in range(200):
        base = random.randrange(20_000, 32_000 - tool.PORT_BLOCK)
        if all(tool.port_free(base + i) for i in range(tool.PORT_BLOCK)):
            return base
    raise AssertionError("no block of free ports found")


@pytest.fixture
def folder() -> Iterator[Path]:
    """The cluster's folder, in /tmp and not tmp_path: as root the PostgreSQL server runs as
    the postgres user, which must reach it (tmp_path's parents are mode 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="marveld-cluster-"))
    parent.chmod(0o755)
    try:
        yield parent / "cluster"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def database_options(request: pytest.FixtureRequest) -> list[str]:
    """``up``'s database options: a fresh database on the session's server when one is
    named, else none (the tool starts its own), once PostgreSQL can be had here."""
    if os.environ.get(postgres.URL_VARIABLE):
        return ["--database-url", request.getfixturevalue("postgres_url")]
    try:
        postgres.bindir()
        postgres._server_user()
    except postgres.Unavailable as exc:
        unavailable(f"PostgreSQL: {exc}")
    return []


async def run_tool(*args: str) -> tuple[int, str]:
    """``python -m tools.cluster ARGS``: its exit status and what it printed."""
    with trio.fail_after(RUN_SECONDS):
        done = await trio.run_process(
            [sys.executable, "-m", "tools.cluster", *args],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, (done.stdout + done.stderr).decode()


def logs(folder: Path) -> str:
    """The tails of the cluster's logs, for a failure's message."""
    found = [*sorted((folder / "logs").glob("*.log")), folder / "postgres" / "server.log"]
    return "".join(
        f"\n--- {log.name} ---\n" + "\n".join(tool.log_tail(log)) for log in found if log.exists()
    )


async def test_a_user_registered_before_a_stop_logs_in_after_the_next_start(
    folder: Path, database_options: list[str]
) -> None:
    need_haproxy()
    base = free_block()
    ports = tool.Ports.from_base(base)
    up = ["up", "--dir", str(folder), "--ports-from", str(base), *database_options]
    try:
        code, out = await run_tool(*up)
        assert code == 0, out + logs(folder)
        assert f"{tool.HOST}:{ports.lb_grpc}" in out
        assert f"http://{tool.HOST}:{ports.lb_http}" in out
        assert f"http://{tool.HOST}:{ports.lb_stats}/stats" in out
        assert "stop it with:" in out
        for secret in (folder / "secrets").iterdir():
            assert secret.stat().st_mode & 0o077 == 0, secret
            assert secret.read_text() not in out, f"{secret.name} was printed"

        async with grpc_client(ports.lb_grpc) as client:  # through HAProxy
            await client.call(calls.register(EMAIL, name="Newcomer"))

        code, out = await run_tool("down", "--dir", str(folder))
        assert code == 0, out + logs(folder)
        assert "data is kept" in out
        code, out = await run_tool("status", "--dir", str(folder))
        assert code != 0, out
        assert "running" not in out, out
        busy = [port for _, port in ports.named(with_postgres=True) if not tool.port_free(port)]
        assert busy == [], "still taken after down"

        code, out = await run_tool(*up)
        assert code == 0, out + logs(folder)
        async with grpc_client(ports.lb_grpc) as client:
            reply = await client.call(calls.login(EMAIL))
        assert reply.access_token
        async with httpx.AsyncClient(timeout=10) as http:  # and the JSON gateway
            login = await http.post(
                f"http://{tool.HOST}:{ports.lb_http}/v1/auth/login",
                json={"email": EMAIL, "password": calls.PASSWORD},
            )
        assert login.status_code == 200, login.text
    finally:
        with trio.CancelScope(shield=True):
            code, out = await run_tool("down", "--dir", str(folder))
    assert code == 0, out
    code, out = await run_tool("status", "--dir", str(folder))
    assert code != 0, out


async def test_without_haproxy_up_says_so_and_starts_nothing(folder: Path) -> None:
    code, out = await run_tool("up", "--dir", str(folder), "--haproxy", "/nonexistent/haproxy")
    assert code == 1
    assert "HAProxy is not installed" in out
    assert "apt-get install haproxy" in out
    assert len(out.strip().splitlines()) == 1, out
    assert not await trio.Path(folder).exists()


async def test_a_port_in_use_is_named_before_anything_starts(folder: Path) -> None:
    need_haproxy()
    base = free_block()
    with socket.socket() as taken:
        taken.bind((tool.HOST, base + 4))  # HAProxy's HTTP port
        taken.listen()
        code, out = await run_tool("up", "--dir", str(folder), "--ports-from", str(base))
    assert code == 1
    assert f"port {base + 4} (HAProxy HTTP) is in use" in out
    assert "--ports-from" in out
    assert not await trio.Path(folder).exists()
