"""systemd integration: ``marveld serve`` as a real process under a fake ``NOTIFY_SOCKET``
(a datagram socket bound in tmp_path), the unit file, and the notifier on its own.

READY=1 must mean serving: the test asks /healthz and the gRPC health service the moment
READY=1 arrives, without retrying. Every wait is bounded."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from marveld.config import load_settings
from marveld.systemd import Notifier
from tests.aio import grpc_client
from tests.conftest import daemon_env

ROOT = Path(__file__).parents[1]
UNIT = ROOT / "config" / "marveld.service"
STATUS = re.compile(r"STATUS=serving: grpc port (\d+), http port (\d+)")


def unit_setting(name: str) -> str:
    """The value of ``name=`` in the shipped unit file."""
    for line in UNIT.read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.partition("=")[2]
    raise AssertionError(f"{name}= is not in {UNIT}")


def seconds(text: str) -> float:
    assert text.endswith("s"), text
    return float(text[:-1])


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; each message a set of lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    async def bind(self) -> None:
        await self.sock.bind(str(self.path))

    async def receive(self, seconds: float = 20) -> set[str]:
        with trio.fail_after(seconds):
            return set((await self.sock.recv(4096)).decode().splitlines())

    async def wait_for(self, line: str, seconds: float = 20) -> set[str]:
        """Messages until one holds ``line``; returns that one."""
        with trio.fail_after(seconds):
            while line not in (message := await self.receive()):
                pass
        return message


@dataclass
class Process:
    proc: trio.Process
    notify: NotifySocket
    stderr: bytearray = field(default_factory=bytearray)

    @property
    def log(self) -> str:
        return self.stderr.decode()


@asynccontextmanager
async def serve_under_systemd(tmp_path: Path, **env: str) -> AsyncIterator[Process]:
    """``marveld serve --demo`` as a child process, as systemd would start it."""
    notify = NotifySocket(tmp_path / "notify.sock")
    await notify.bind()
    environ = {**os.environ, **daemon_env(tmp_path, "http://127.0.0.1:9/v1/public")}
    environ.update(NOTIFY_SOCKET=str(notify.path), MARVELD_LOG_FORMAT="json", **env)
    config = tmp_path / "marveld.toml"
    config.touch()
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "marveld", "serve", "--config", str(config), "--demo"],
        env=environ,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    running = Process(proc, notify)

    async def drain() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.receive_some():
            running.stderr += chunk

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            yield running
            with trio.fail_after(30):
                await proc.wait()
    finally:
        proc.kill()
        await proc.wait()
        await proc.stderr.aclose()
        notify.sock.close()


async def grpc_health(port: int) -> int:
    async with grpc_client(port) as client:

        async def check(channel: Channel) -> int:
            reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=5)
            assert reply is not None
            return int(reply.status)

        return await client.call(check)


async def test_ready_after_binding_and_stopping_on_sigterm(tmp_path: Path) -> None:
    async with serve_under_systemd(tmp_path) as daemon:
        ready = await daemon.notify.receive()
        assert "READY=1" in ready, f"the first message was {ready}"
        status = STATUS.search("\n".join(ready))
        assert status is not None, ready
        grpc_port, http_port = int(status.group(1)), int(status.group(2))
        # Serving at the moment READY=1 arrives: no retries, no waiting.
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{http_port}/healthz")).status_code == 200
        assert await grpc_health(grpc_port) == HealthCheckResponse.SERVING

        daemon.proc.send_signal(signal.SIGTERM)
        stopping = await daemon.notify.wait_for("STOPPING=1")
        assert any(line.startswith("STATUS=") for line in stopping)
        with trio.fail_after(seconds(unit_setting("TimeoutStopSec"))):
            code = await daemon.proc.wait()
    assert code == 0
    assert "SIGTERM received, stopping gracefully" in daemon.log
    assert "Traceback" not in daemon.log
    assert "WATCHDOG=1" not in ready  # no WATCHDOG_USEC: no pings


async def test_watchdog_pings_while_the_loop_runs(tmp_path: Path) -> None:
    async with serve_under_systemd(tmp_path, WATCHDOG_USEC="200000") as daemon:
        await daemon.notify.wait_for("READY=1")
        with trio.fail_after(5):  # 0.1 s apart: three pings well within the bound
            for _ in range(3):
                await daemon.notify.wait_for("WATCHDOG=1")
        daemon.proc.send_signal(signal.SIGINT)
        await daemon.notify.wait_for("STOPPING=1")
    assert daemon.proc.returncode == 0


# --- the notifier on its own ------------------------------------------------------------------


def bound_datagram_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_outside_systemd_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_seconds is None
    assert not notifier.ready("serving")
    assert not notifier.stopping()


def test_a_path_socket_gets_ready_with_a_status(tmp_path: Path) -> None:
    with bound_datagram_socket(str(tmp_path / "n.sock")) as sock:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
        assert notifier.ready("serving: grpc port 1, http port 2")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving: grpc port 1, http port 2"


def test_an_abstract_socket_is_reached_by_its_at_sign_name() -> None:
    name = f"marveld-test-{os.getpid()}"
    with bound_datagram_socket("\0" + name) as sock:
        assert Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=shutting down"


def test_a_vsock_address_is_not_used(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "not an AF_UNIX socket" in caplog.text


def test_a_socket_that_is_gone_is_a_warning_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready("x")
    assert "cannot notify systemd" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_follows_sd_watchdog_enabled(
    env: dict[str, str], expected: float | None
) -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": "@x", **env}).watchdog_seconds == expected


async def test_the_watchdog_task_pings_every_half_interval(tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "w.sock")
    await notify.bind()
    notifier = Notifier(str(notify.path), watchdog_seconds=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.keep_watchdog)
        for _ in range(2):
            assert await notify.receive(seconds=2) == {"WATCHDOG=1"}
        nursery.cancel_scope.cancel()
    notify.sock.close()


async def test_the_watchdog_task_returns_when_there_is_no_watchdog() -> None:
    with trio.fail_after(1):
        await Notifier.from_env({"NOTIFY_SOCKET": "@x"}).keep_watchdog()


# --- the unit file ----------------------------------------------------------------------------


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verified as shipped, except that ExecStart runs this environment's marveld (verify
    refuses a unit whose program does not exist)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    text = UNIT.read_text().replace("/opt/marveld/bin/marveld", f"{sys.executable} -m marveld")
    unit = tmp_path / "marveld.service"
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_the_unit_promises_what_the_daemon_does() -> None:
    assert unit_setting("Type") == "notify"
    assert unit_setting("Environment") == "MARVELD_DATABASE_PATH=%S/marveld/marveld.db"
    credentials = [
        line.split("=", 1)[1].split(":", 1)[0]
        for line in UNIT.read_text().splitlines()
        if line.startswith("LoadCredential=")
    ]
    # config.py reads $CREDENTIALS_DIRECTORY/<secret name in lower case>.
    assert credentials == [
        "marvel_public_key",
        "marvel_private_key",
        "marveld_jwt_secret",
        "marveld_webhook_secret",
    ]


# --- the template unit: several replicas on one host ------------------------------------------

TEMPLATE = ROOT / "config" / "marveld@.service"
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def template_settings(name: str, unit: Path = TEMPLATE) -> list[str]:
    """Every value of ``name=`` in the template unit (or ``unit``), in order."""
    return [
        line.partition("=")[2]
        for line in unit.read_text().splitlines()
        if line.startswith(f"{name}=")
    ]


def template_environment(instance: str) -> dict[str, str]:
    """The unit's Environment= variables, as systemd sets them for ``marveld@instance``."""
    pairs = (value.partition("=") for value in template_settings("Environment"))
    return {name: value.replace("%i", instance) for name, _, value in pairs}


def hardening(unit: Path) -> list[str]:
    """A unit's lines from its "# Hardening." comment up to its [Install] section."""
    lines = unit.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Hardening."))
    return lines[start : lines.index("[Install]")]


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return found


def runnable_copy(unit: Path, folder: Path) -> Path:
    """``unit`` in ``folder``, its ExecStart running this environment's marveld (verify
    refuses a unit whose program does not exist)."""
    copy = folder / unit.name
    copy.write_text(
        unit.read_text().replace("/opt/marveld/bin/marveld", f"{sys.executable} -m marveld")
    )
    return copy


def test_the_template_as_marveld_at_r1_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    runnable_copy(TEMPLATE, tmp_path)
    result = subprocess.run(
        [analyze(), "verify", str(tmp_path / "marveld@r1.service")],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_the_template_is_hardened_as_the_unit_is(tmp_path: Path) -> None:
    assert hardening(TEMPLATE) == hardening(UNIT)
    exposure = {}
    for unit, name in ((UNIT, "marveld.service"), (TEMPLATE, "marveld@r1.service")):
        runnable_copy(unit, tmp_path)
        result = subprocess.run(
            [analyze(), "security", "--offline=yes", str(tmp_path / name)],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        found = EXPOSURE.search(result.stdout)
        assert found is not None, result.stdout + result.stderr
        exposure[name] = float(found.group(1))
    assert exposure["marveld@r1.service"] <= exposure["marveld.service"], exposure


def test_the_template_promises_what_the_daemon_does(tmp_path: Path) -> None:
    assert template_settings("Type") == ["notify"]
    assert template_settings("ExecStart") == [
        "/opt/marveld/bin/marveld serve --config /etc/marveld/marveld.toml"
    ]
    assert template_settings("EnvironmentFile") == ["/etc/marveld/%i.env"]
    assert template_settings("RestartPreventExitStatus") == ["2"]
    assert template_settings("StateDirectory") == []  # PostgreSQL: no database file here
    assert template_settings("LoadCredential") == [
        line.partition("=")[2]
        for line in UNIT.read_text().splitlines()
        if line.startswith("LoadCredential=")
    ]
    # What the unit sets, with what an instance's environment file gives, is a valid
    # configuration for a PostgreSQL replica named after the instance.
    config = tmp_path / "marveld.toml"
    config.touch()
    env = {
        **daemon_env(tmp_path, "http://127.0.0.1:9/v1/public"),
        **template_environment("r1"),
        "MARVELD_DATABASE_URL": "postgresql://marveld@db.internal:5432/marveld",
    }
    del env["MARVELD_DATABASE_PATH"]
    settings = load_settings(config, env)
    assert settings.replica.id == "r1"
    assert settings.database.url is not None


def test_the_template_stops_after_the_drain_it_asks_for(tmp_path: Path) -> None:
    """TimeoutStopSec exceeds the unit's shutdown.drain_delay + shutdown.grace with a
    margin: systemd's SIGKILL meets only a shutdown that hangs."""
    config = tmp_path / "marveld.toml"
    config.touch()
    env = {**daemon_env(tmp_path, "http://127.0.0.1:9/v1/public"), **template_environment("r1")}
    settings = load_settings(config, env)
    (timeout,) = template_settings("TimeoutStopSec")
    drain = settings.shutdown.drain_delay + settings.shutdown.grace
    assert drain > 0
    assert seconds(timeout) >= drain + 5, (timeout, drain)


async def test_a_configuration_error_exits_2_as_restart_prevent_exit_status_says(
    tmp_path: Path,
) -> None:
    config = tmp_path / "marveld.toml"
    config.touch()
    environ = {**os.environ, **daemon_env(tmp_path, "http://127.0.0.1:9/v1/public")}
    environ["MARVELD_GRPC_LISTEN"] = "not an address"
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "marveld", "serve", "--config", str(config)],
            env=environ,
            capture_stderr=True,
            check=False,
        )
    # Both units: a configuration error is not restarted every 5 s forever.
    for unit in (UNIT, TEMPLATE):
        assert template_settings("RestartPreventExitStatus", unit) == [str(done.returncode)]
    assert done.returncode == 2
    assert b"configuration error" in done.stderr
