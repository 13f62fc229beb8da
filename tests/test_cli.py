"""The ``marveld`` command: a clean stop on SIGTERM, one clear line for bad settings, the demo."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from grpclib.client import Channel

from marveld import cli
from marveld.proto.marvel import v1 as pb
from tests.aio import grpc_client
from tests.conftest import daemon_env, make_settings

READY = re.compile(r"marveld ready: grpc port (\d+), http port (\d+)")


def run_main(argv: list[str], env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv, env)
    assert info.value.code == 2
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
    assert "SIGTERM received, shutting down" in rest
    assert "Traceback" not in rest
