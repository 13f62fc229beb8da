"""Prometheus: ``/metrics`` of a daemon that served every kind of call passes
``promtool check metrics``; the scrape example passes ``promtool check config``; every
query and rule in docs/dashboards.md parses and names only metrics marveld exports.

The promtool tests are skipped (and say so) where promtool is not installed; .ci/run
installs it when it can."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from grpclib.client import Channel

from marveld.proto.marvel import v1 as pb
from tests.calls import TIMEOUT, list_characters, register_and_login, status_of
from tests.conftest import Running
from tests.test_cache import health_of

ROOT = Path(__file__).parents[1]
DASHBOARDS = ROOT / "docs" / "dashboards.md"
SCRAPE_CONFIG = ROOT / "config" / "prometheus.yml"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return subprocess.run(
        [tool, *args], input=stdin, capture_output=True, text=True, check=False, timeout=60
    )


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DASHBOARDS.read_text(), re.S)


async def busy_metrics(m: Running) -> str:
    """/metrics after hits, misses, errors, health checks and gateway calls."""
    auth = await register_and_login(m)
    for _ in range(2):
        await list_characters(m, auth, name_starts_with="spider")

    async def unknown(channel: Channel) -> pb.Character:
        return await pb.CharacterServiceStub(channel).get_character(
            pb.GetCharacterRequest(id=5), metadata=auth, timeout=TIMEOUT
        )

    await status_of(m, unknown)
    await health_of(m, "")
    async with httpx.AsyncClient(base_url=m.http, timeout=TIMEOUT) as http:
        await http.get("/v1/characters", headers=auth)
        await http.get("/readyz")
    return await m.metrics()


async def test_metrics_pass_promtool_check_metrics(marveld: Running) -> None:
    exposition = await busy_metrics(marveld)
    result = promtool("check", "metrics", stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_the_scrape_example_passes_promtool_check_config() -> None:
    result = promtool("check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_and_rule_parses(tmp_path: Path) -> None:
    queries = blocks("promql")
    assert len(queries) >= 10
    recording = "groups:\n  - name: dashboards\n    rules:\n" + "".join(
        f"      - record: marveld:dashboard_{n}\n        expr: |\n"
        + "".join(f"          {line}\n" for line in query.strip().splitlines())
        for n, query in enumerate(queries)
    )
    (tmp_path / "queries.yml").write_text(recording)
    [alerts] = blocks("yaml")
    (tmp_path / "alerts.yml").write_text(alerts)
    result = promtool("check", "rules", str(tmp_path / "queries.yml"), str(tmp_path / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


async def test_the_dashboards_name_only_metrics_marveld_exports(marveld: Running) -> None:
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in (await busy_metrics(marveld)).splitlines()
        if line and not line.startswith("#")
    }
    named = set(re.findall(r"\b(?:marveld|grpc_server)_[a-z_]+", DASHBOARDS.read_text()))
    assert named, "no metric names found in docs/dashboards.md"
    assert named <= exported, named - exported
