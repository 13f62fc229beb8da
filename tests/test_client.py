"""``marveld client`` against a live daemon: register → login → me → characters → search →
get, tables and JSON, the token file, and one clear line with a status for each failure.

The command runs in-process (``cli.main`` in a worker thread: it runs its own asyncio
loop) except where a real process matters (a password on stdin)."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from marveld import cli
from marveld.client import config_dir
from tests.calls import PASSWORD, TIMEOUT
from tests.conftest import Running

pytestmark = pytest.mark.both_backends  # the service tests run on SQLite and PostgreSQL


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


class Client:
    """``marveld client ...`` with the environment of a user of ``marveld``."""

    def __init__(self, capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> None:
        self.capsys = capsys
        self.env = env

    async def __call__(self, *argv: str, **env: str) -> Result:
        def main() -> int:
            try:
                cli.main(["client", *argv], {**self.env, **env})
            except SystemExit as exc:
                return int(exc.code or 0)
            raise AssertionError("cli.main returned without exiting")

        self.capsys.readouterr()
        code = await trio.to_thread.run_sync(main)
        out, err = self.capsys.readouterr()
        return Result(code, out, err)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def client(marveld: Running, capsys: pytest.CaptureFixture[str], home: Path) -> Client:
    return Client(
        capsys,
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "MARVELD_CLIENT_SERVER": f"127.0.0.1:{marveld.endpoints.grpc_port}",
            "MARVELD_CLIENT_PASSWORD": PASSWORD,
        },
    )


async def logged_in(client: Client) -> None:
    assert (await client("register", "--name", "Peter", "--email", "p@example.com")).code == 0
    assert (await client("login", "--email", "p@example.com")).code == 0


def failed(result: Result, line: str, code: int = 1) -> None:
    """One line on stderr saying what failed, nothing on stdout, the exit status."""
    assert result.code == code, result
    assert result.out == ""
    assert result.err.count("\n") == 1, result.err
    assert result.err.startswith("marveld client: ")
    assert line in result.err, result.err


async def test_the_round_trip(client: Client, home: Path, marveld: Running) -> None:
    registered = await client("register", "--name", "Peter", "--email", "p@example.com")
    assert registered.code == 0, registered.err
    assert registered.out.startswith("registered Peter <p@example.com>, id ")

    login = await client("login", "--email", "p@example.com")
    assert login.code == 0, login.err
    token_file = home / "config" / "marveld" / "token.json"
    assert f"token in {token_file}" in login.out
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    server = client.env["MARVELD_CLIENT_SERVER"]
    kept = json.loads(token_file.read_text())["servers"][server]
    assert kept["email"] == "p@example.com"
    assert kept["access_token"] not in login.out  # a credential stays in the file

    me = await client("me")
    assert me.code == 0, me.err
    assert "email       p@example.com" in me.out

    table = await client("characters", "--name-starts-with", "spider", "--limit", "3")
    assert table.code == 0, table.err
    header, *rows = table.out.splitlines()
    assert header.split() == ["ID", "NAME", "MODIFIED", "COMICS"]
    assert rows[0].split()[0].isdigit()
    assert "3 of " in table.out
    assert "cache MISS" in table.out

    again = await client("characters", "--name-starts-with", "SPIDER", "--limit", "3", "--json")
    page = again.json()
    assert isinstance(page, dict)
    assert page["cache_status"] == "HIT"
    assert len(page["characters"]) == 3
    assert all(c["name"].lower().startswith("spider") for c in page["characters"])

    search = await client("search", "iron", "--json")
    assert search.code == 0, search.err
    found = search.json()
    assert isinstance(found, dict)
    assert all("iron" in c["name"].lower() for c in found["characters"])

    one = await client("get", "1009610")
    assert one.code == 0, one.err
    assert "Spider-Man (Peter Parker)" in one.out
    assert "Bitten by a radioactive spider" in one.out

    # --json before the sub-command too; the same shape as the JSON gateway's.
    as_json = await client("--json", "get", "1009610")
    async with httpx.AsyncClient(base_url=marveld.http, timeout=TIMEOUT) as http:
        token = kept["access_token"]
        gateway = await http.get(
            "/v1/characters/1009610", headers={"authorization": f"Bearer {token}"}
        )
    assert as_json.json() == gateway.json()


async def test_each_failure_is_one_line_with_its_status(client: Client) -> None:
    failed(await client("me"), "not logged in to 127.0.0.1:")
    await logged_in(client)
    failed(
        await client("login", "--email", "p@example.com", MARVELD_CLIENT_PASSWORD="wrong one!"),
        "UNAUTHENTICATED: wrong email or password",
    )
    failed(
        await client("register", "--name", "P", "--email", "p@example.com"),
        "ALREADY_EXISTS",
    )
    failed(await client("characters", "--limit", "0"), "INVALID_ARGUMENT: limit: must be at least")
    failed(await client("search", " "), "INVALID_ARGUMENT: query")
    failed(await client("get", "5"), "NOT_FOUND: character 5 not found")


async def test_a_token_is_only_sent_to_the_server_that_issued_it(
    client: Client, marveld: Running, home: Path
) -> None:
    await logged_in(client)
    other = f"localhost:{marveld.endpoints.grpc_port}"
    failed(await client("me", "--server", other), f"not logged in to {other}")

    token_file = home / "config" / "marveld" / "token.json"
    data = json.loads(token_file.read_text())
    for entry in data["servers"].values():
        entry["access_token"] = "expired.or.forged"
    token_file.write_text(json.dumps(data))
    token_file.chmod(0o644)
    refused = await client("me")
    assert refused.code == 1
    assert "UNAUTHENTICATED: access token is not valid (log in again" in refused.err
    assert "readable by others; chmod 600" in refused.err


async def test_an_unreachable_server_fails_within_the_timeout(client: Client) -> None:
    with socket.socket() as sock:  # a port held bound, never listening: refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with trio.fail_after(10):
            result = await client("register", "--name", "P", "--email", "p@example.com",
                                  "--server", f"127.0.0.1:{port}", "--timeout", "3")  # fmt: skip
    failed(result, f"UNAVAILABLE: cannot reach 127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["me", "--server", "no-port"], "--server must be host:port"),
        (["me", "--timeout", "0"], "--timeout must be more than 0"),
    ],
)
async def test_usage_errors_exit_2(client: Client, argv: list[str], line: str) -> None:
    failed(await client(*argv), line, code=2)


async def test_without_a_terminal_a_password_must_be_given(client: Client) -> None:
    env = {k: v for k, v in client.env.items() if k != "MARVELD_CLIENT_PASSWORD"}
    quiet = Client(client.capsys, env)
    failed(await quiet("login", "--email", "p@example.com"), "no password", code=2)


async def test_a_password_on_stdin_in_a_real_process(
    marveld: Running, client: Client, home: Path
) -> None:
    await logged_in(client)
    env = {**os.environ, **client.env}
    del env["MARVELD_CLIENT_PASSWORD"]
    proc = await trio.run_process(
        [sys.executable, "-m", "marveld", "client", "login", "--email", "p@example.com",
         "--password-stdin", "--json"],
        env=env, stdin=f"{PASSWORD}\n".encode(), capture_stdout=True, capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    answer = json.loads(proc.stdout)
    assert answer["email"] == "p@example.com"
    assert answer["token_file"] == str(home / "config" / "marveld" / "token.json")
    assert "access_token" not in answer


def test_the_config_dir_follows_xdg() -> None:
    assert config_dir({"XDG_CONFIG_HOME": "/x/conf", "HOME": "/h"}) == Path("/x/conf/marveld")
    assert config_dir({"XDG_CONFIG_HOME": "relative", "HOME": "/h"}) == Path("/h/.config/marveld")
    assert config_dir({"HOME": "/h"}) == Path("/h/.config/marveld")


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["client", "--help"], {})
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("register", "login", "me", "characters", "search", "get"):
        assert command in out
