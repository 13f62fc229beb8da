"""A client that is not ours: grpcio in another process, knowing the API only through
server reflection, walks the contract against the daemon."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import trio

from tests.conftest import Running

CLIENT = Path(__file__).parent / "reflection_client.py"


async def test_grpcio_client_walks_the_contract_through_reflection(marveld: Running) -> None:
    done = await trio.run_process(
        [sys.executable, str(CLIENT), str(marveld.endpoints.grpc_port)], capture_stdout=True
    )
    result = json.loads(done.stdout)

    assert {
        "marvel.v1.AuthService",
        "marvel.v1.UserService",
        "marvel.v1.CharacterService",
        "grpc.health.v1.Health",
    } <= set(result["services"])
    assert result["login"]["token_type"] == "Bearer"
    assert result["me"]["email"] == "ned@example.com"
    assert result["first"]["cache_status"] == "CACHE_STATUS_MISS"
    assert result["second"]["cache_status"] == "CACHE_STATUS_HIT"
    assert result["spider_man"]["name"] == "Spider-Man (Peter Parker)"
    assert result["health_file"].endswith("health.proto")

    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{marveld.http}/metrics")).text
    assert 'marveld_cache_requests_total{result="hit",tier="memory"} 1.0' in metrics
