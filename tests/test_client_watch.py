"""``marveld client watch`` against a live daemon: it prints each notification and, run
again, resumes after the last one it saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.calls import PASSWORD
from tests.conftest import Running
from tests.test_client import Client
from tests.test_notifications import HULK, change, notified

pytestmark = pytest.mark.both_backends  # the service tests run on SQLite and PostgreSQL

__all__ = ["notified"]  # the fixture, shared with the notification tests


@pytest.fixture
def client(notified: Running, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Client:
    home = tmp_path / "home"
    return Client(
        capsys,
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "MARVELD_CLIENT_SERVER": f"127.0.0.1:{notified.endpoints.grpc_port}",
            "MARVELD_CLIENT_PASSWORD": PASSWORD,
        },
    )


async def test_watch_prints_notifications_and_resumes_where_it_stopped(
    notified: Running, client: Client
) -> None:
    assert (await client("register", "--name", "Wanda", "--email", "w@example.com")).code == 0
    assert (await client("login", "--email", "w@example.com")).code == 0

    await change(notified, HULK, "Watched once.")
    first = await client("watch", "--after-cursor", "0", "--count", "1", "--json")
    assert first.code == 0, first.err
    (note,) = [json.loads(line) for line in first.out.splitlines()]
    assert note["character"]["id"] == HULK
    assert note["character"]["description"] == "Watched once."

    await change(notified, HULK, "Watched twice.")
    second = await client("watch", "--count", "1", "--json")  # resumes after the first
    assert second.code == 0, second.err
    (again,) = [json.loads(line) for line in second.out.splitlines()]
    assert again["cursor"] > note["cursor"]
    assert again["character"]["description"] == "Watched twice."

    table = await client("watch", "--after-cursor", "0", "--count", "2")
    lines = table.out.splitlines()
    assert len(lines) == 2
    assert all(str(HULK) in line and "updated" in line for line in lines)


async def test_watch_over_the_websocket(notified: Running, client: Client) -> None:
    assert (await client("register", "--name", "Vis", "--email", "v@example.com")).code == 0
    assert (await client("login", "--email", "v@example.com")).code == 0
    await change(notified, HULK, "Seen on the WebSocket.")
    http = f"127.0.0.1:{notified.endpoints.http_port}"
    got = await client(
        "watch", "--ws", "--http", http, "--after-cursor", "0", "--count", "1", "--json"
    )
    assert got.code == 0, got.err
    (note,) = [json.loads(line) for line in got.out.splitlines()]
    assert note["character"]["description"] == "Seen on the WebSocket."
    # The gRPC watch resumes after what the WebSocket watch saw.
    await change(notified, HULK, "Then over gRPC.")
    then = await client("watch", "--count", "1", "--json")
    (after,) = [json.loads(line) for line in then.out.splitlines()]
    assert after["cursor"] > note["cursor"]
    assert after["character"]["description"] == "Then over gRPC."
