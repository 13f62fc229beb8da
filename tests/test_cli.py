"""The ``marveld`` command: a clean stop on SIGTERM, one clear line for bad settings, the demo."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from grpclib.client import Channel

from marveld import cli
from marveld.proto.marvel import v1 as pb
from marveld.storage import Store
from tests.aio import grpc_client
from tests.conftest import daemon_env, make_settings

READY = re.compile(r"marveld ready: grpc port (\d+), http port (\d+)")


@pytest.fixture(autouse=True)
def cli_logging_undone() -> Iterator[None]:
    """cli.main sets up logging on the root logger, writing to this test's captured stderr:
    take its handlers away after the test, so later logs do not go to a closed stream."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)
    root.setLevel(level)


def run_main(
    argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str], *, code: int = 2
) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv, env)
    assert info.value.code == code
    return capsys.readouterr().err


def test_unknown_setting_stops_start_up_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "marveld.toml"
    config.write_text("[cache]\ntll = 5\n")
    err = run_main(
        ["serve", "--config", str(config)], daemon_env(tmp_path, "http://x/v1/public"), capsys
    )
    assert err.count("\n") == 1
    assert "tll" in err
    assert "ttl" in err


def test_missing_secret_stops_start_up_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = daemon_env(tmp_path, "http://x/v1/public")
    del env["MARVELD_JWT_SECRET"]
    config = tmp_path / "marveld.toml"
    config.touch()
    err = run_main(["serve", "--config", str(config)], env, capsys)
    assert "MARVELD_JWT_SECRET" in err
    assert err.count("\n") == 1


def test_bad_simulator_option_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    err = run_main(["sim", "--fail-rate", "2"], {}, capsys)
    assert "fail" in err
    assert err.count("\n") == 1


def empty_config(tmp_path: Path) -> Path:
    config = tmp_path / "marveld.toml"
    config.touch()
    return config


@contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def test_a_file_that_is_not_a_database_stops_start_up_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = daemon_env(tmp_path, "http://127.0.0.1:9/v1/public")
    env["MARVELD_LOG_FORMAT"] = "text"
    junk = bytes(range(256)) * 64
    path = Path(env["MARVELD_DATABASE_PATH"])
    path.write_bytes(junk)
    err = run_main(["serve", "--config", str(empty_config(tmp_path))], env, capsys, code=1)
    line = err.strip().splitlines()[-1]
    assert f"cannot start: cannot open database {path}: file is not a database" in line
    assert "Traceback" not in err
    assert path.read_bytes() == junk  # left as it was


@pytest.mark.parametrize("setting", ["grpc.listen", "http.listen"])
def test_a_taken_port_stops_start_up_naming_the_setting(
    setting: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = daemon_env(tmp_path, "http://127.0.0.1:9/v1/public")
    env["MARVELD_LOG_FORMAT"] = "text"
    with taken_port() as port:
        address = f"127.0.0.1:{port}"
        env[f"MARVELD_{setting.replace('.', '_').upper()}"] = address
        err = run_main(["serve", "--config", str(empty_config(tmp_path))], env, capsys, code=1)
    line = err.strip().splitlines()[-1]
    assert f"cannot start: cannot listen on {address} ({setting}): Address already in use" in line
    assert "Traceback" not in err


def test_the_simulator_on_a_taken_port_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with taken_port() as port:
        err = run_main(["sim", "--port", str(port)], {}, capsys, code=1)
    assert f"cannot listen on 127.0.0.1:{port} (--host, --port)" in err
    assert "Traceback" not in err


async def test_demo_serves_with_its_own_simulator(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "http://127.0.0.1:9/v1/public")  # nothing listens there
    async with trio.open_nursery() as nursery:
        endpoints = await nursery.start(partial(cli.serve, settings, demo=True))
        async with grpc_client(endpoints.grpc_port) as client:

            async def go(channel: Channel) -> pb.Character:
                auth = pb.AuthServiceStub(channel)
                await auth.register(
                    pb.RegisterRequest(name="D", email="d@example.com", password="demo password"),
                    timeout=10,
                )
                token = await auth.login(
                    pb.LoginRequest(email="d@example.com", password="demo password"), timeout=10
                )
                return await pb.CharacterServiceStub(channel).get_character(
                    pb.GetCharacterRequest(id=1009610),
                    metadata={"authorization": f"Bearer {token.access_token}"},
                    timeout=10,
                )

            spider_man = await client.call(go)
        assert spider_man.name == "Spider-Man"
        nursery.cancel_scope.cancel()


async def test_sigterm_stops_the_daemon_with_status_0(tmp_path: Path) -> None:
    """A real process: ready line on stderr, /healthz answers, SIGTERM ends it cleanly."""
    env = {**os.environ, **daemon_env(tmp_path, "http://127.0.0.1:9/v1/public")}
    env["MARVELD_LOG_FORMAT"] = "text"
    config = tmp_path / "marveld.toml"
    config.touch()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "marveld", "serve", "--config", str(config), "--demo"],
        env=env,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    output = b""
    try:
        while (ready := READY.search(output.decode())) is None:
            chunk = await proc.stderr.receive_some()
            assert chunk, "the daemon exited before it was ready:\n" + output.decode()
            output += chunk
        async with httpx.AsyncClient() as http:
            health = await http.get(f"http://127.0.0.1:{ready.group(2)}/healthz")
        assert health.status_code == 200
        proc.send_signal(signal.SIGTERM)
        while chunk := await proc.stderr.receive_some():
            output += chunk
        code = await proc.wait()
    finally:
        proc.kill()
        await proc.wait()
        await proc.stderr.aclose()
    rest = output.decode()
    assert code == 0
    assert "SIGTERM received, stopping gracefully" in rest
    assert "drained: every call answered, every connection closed" in rest
    assert "Traceback" not in rest


def registered(tmp_path: Path, email: str, database: dict[str, str]) -> dict[str, str]:
    """A database (``database``'s backend) holding one user; the environment of a command
    that uses it."""
    env = daemon_env(tmp_path, "http://127.0.0.1:9/v1/public")
    if database:
        del env["MARVELD_DATABASE_PATH"]
        env.update(database)

    async def create() -> None:
        async with store_of(env) as store:
            await store.users.create(
                name="Someone", email=email, password_hash="$argon2id$x", now=datetime.now(UTC)
            )

    trio.run(create)
    return env


def store_of(env: dict[str, str]) -> AbstractAsyncContextManager[Store]:
    path = Path(env.get("MARVELD_DATABASE_PATH", ""))
    return Store.connect(path=path, url=env.get("MARVELD_DATABASE_URL"))


def role_of(env: dict[str, str], email: str) -> str:
    async def read() -> str:
        async with store_of(env) as store:
            user = await store.users.by_email(email)
            assert user is not None
            return user.role

    return trio.run(read)


@pytest.mark.both_backends
def test_grant_admin_makes_an_admin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], database: dict[str, str]
) -> None:
    env = registered(tmp_path, "fury@example.com", database)
    config = tmp_path / "marveld.toml"
    config.touch()
    with pytest.raises(SystemExit) as info:
        cli.main(["users", "grant-admin", " Fury@Example.com", "--config", str(config)], env)
    assert info.value.code == 0
    out = capsys.readouterr()
    assert out.out == "fury@example.com is now an admin\n"
    assert out.err == ""
    assert role_of(env, "fury@example.com") == "admin"


def test_grant_admin_needs_no_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = registered(tmp_path, "hill@example.com", {})
    for name in ("MARVEL_PUBLIC_KEY", "MARVEL_PRIVATE_KEY", "MARVELD_JWT_SECRET"):
        del env[name]
    config = tmp_path / "marveld.toml"
    config.touch()
    with pytest.raises(SystemExit) as info:
        cli.main(["users", "grant-admin", "hill@example.com", "--config", str(config)], env)
    assert info.value.code == 0
    assert role_of(env, "hill@example.com") == "admin"


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        ("nobody@example.com", "no user with email nobody@example.com in "),
        ("not an email", "'not an email' is not an email address"),
    ],
)
@pytest.mark.both_backends
def test_grant_admin_refuses_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    email: str,
    expected: str,
    database: dict[str, str],
) -> None:
    env = registered(tmp_path, "coulson@example.com", database)
    config = tmp_path / "marveld.toml"
    config.touch()
    err = run_main(["users", "grant-admin", email, "--config", str(config)], env, capsys)
    assert err.startswith(f"marveld users grant-admin: {expected}")
    assert err.count("\n") == 1
    assert role_of(env, "coulson@example.com") == "user"


def test_grant_admin_without_a_database_or_with_bad_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = daemon_env(tmp_path, "http://127.0.0.1:9/v1/public")
    config = tmp_path / "marveld.toml"
    config.touch()
    err = run_main(["users", "grant-admin", "a@example.com", "--config", str(config)], env, capsys)
    assert (
        err
        == f"marveld users grant-admin: no database at {tmp_path / 'marveld.db'} (database.path)\n"
    )
    assert not (tmp_path / "marveld.db").exists()
    with sqlite3.connect(tmp_path / "marveld.db") as newer:  # written by a later marveld
        newer.execute("PRAGMA user_version = 999")
    err = run_main(["users", "grant-admin", "a@example.com", "--config", str(config)], env, capsys)
    assert "schema version 999, newer than" in err
    assert err.count("\n") == 1
    config.write_text("[database]\npth = 'x'\n")
    err = run_main(["users", "grant-admin", "a@example.com", "--config", str(config)], env, capsys)
    assert err.startswith("marveld users grant-admin: configuration error: ")
    assert err.count("\n") == 1
