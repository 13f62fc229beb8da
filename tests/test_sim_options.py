"""``marveld sim`` options: the command line, keys from the environment, and validation."""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx
import pytest
import trio

from marveld.sim import (
    SimHandle,
    SimOptions,
    add_sim_arguments,
    marvel_hash,
    options_from_args,
    run_sim,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="marveld sim")
    add_sim_arguments(parser)
    return parser.parse_args(argv)


def test_defaults() -> None:
    options = options_from_args(parse(), {})
    assert options == SimOptions(port=8089)
    assert (options.host, options.public_key, options.private_key) == (
        "127.0.0.1",
        "sim-public",
        "sim-private",
    )
    assert options.dataset is None
    assert options.daily_limit is None


def test_every_flag(tmp_path: Path) -> None:
    args = parse(
        "--host", "0.0.0.0", "--port", "0", "--dataset", str(tmp_path / "c.json"),
        "--latency-ms", "25", "--fail-rate", "0.1", "--daily-limit", "1000",
        "--webhook-url", "http://127.0.0.1:9/hook", "--seed", "3", "--churn", "6",
    )  # fmt: skip
    options = options_from_args(args, {"MARVELD_WEBHOOK_SECRET": "hook-key"})
    assert options == SimOptions(
        host="0.0.0.0",
        port=0,
        dataset=tmp_path / "c.json",
        latency_ms=25.0,
        fail_rate=0.1,
        daily_limit=1000,
        webhook_url="http://127.0.0.1:9/hook",
        seed=3,
        webhook_secret="hook-key",
        churn=6.0,
    )
    assert "hook-key" not in repr(options)


def test_keys_come_from_the_environment() -> None:
    env = {"MARVEL_PUBLIC_KEY": "pub", "MARVEL_PRIVATE_KEY": " priv\n"}
    options = options_from_args(parse(), env)
    assert (options.public_key, options.private_key) == ("pub", "priv")


def test_keys_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "public").write_text("pub-from-file\n")
    (tmp_path / "private").write_text("priv-from-file\n")
    env = {
        "MARVEL_PUBLIC_KEY_FILE": str(tmp_path / "public"),
        "MARVEL_PRIVATE_KEY_FILE": str(tmp_path / "private"),
    }
    options = options_from_args(parse(), env)
    assert (options.public_key, options.private_key) == ("pub-from-file", "priv-from-file")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MARVEL_PUBLIC_KEY": "a", "MARVEL_PUBLIC_KEY_FILE": "/x"}, "not both"),
        ({"MARVEL_PRIVATE_KEY_FILE": "/nonexistent/key"}, "cannot read /nonexistent/key"),
        ({"MARVEL_PRIVATE_KEY_FILE": "/dev/null"}, "is empty"),
    ],
)
def test_key_mistakes_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        options_from_args(parse(), env)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fail-rate", "1.5"], "fail_rate"),
        (["--fail-rate", "-0.1"], "fail_rate"),
        (["--latency-ms", "-1"], "latency_ms"),
        (["--latency-ms", "nan"], "latency_ms"),
        (["--daily-limit", "-1"], "daily_limit"),
        (["--port", "70000"], "port"),
        (["--webhook-url", "http://127.0.0.1:9/hook"], "MARVELD_WEBHOOK_SECRET"),
        (["--churn", "-1"], "churn"),
        (["--churn", "nan"], "churn"),
    ],
)
def test_bad_values_are_refused_naming_the_option(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        options_from_args(parse(*argv), {})


async def test_a_simulator_from_the_command_line_takes_the_environment_keys(
    nursery: trio.Nursery,
) -> None:
    options = options_from_args(
        parse("--port", "0"), {"MARVEL_PUBLIC_KEY": "pk", "MARVEL_PRIVATE_KEY": "sk"}
    )
    handle: SimHandle = await nursery.start(run_sim, options)
    params = {"ts": "9", "apikey": "pk", "hash": marvel_hash("9", "sk", "pk"), "limit": "1"}
    async with httpx.AsyncClient(base_url=handle.url) as http:
        r = await http.get("/characters", params=params)
    assert r.status_code == 200
    assert r.json()["data"]["total"] == 1500
