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
    assert "SIGTERM received, shutting down" in daemon.log
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
