"""The layers of DESIGN §7: dependencies point inward and each third-party library lives in
one place. Reads every module's imports; fails naming the module that reaches the wrong way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "marveld"

# What each part of marveld may import from marveld itself.
INTERNAL = {
    "domain": {"domain"},
    "config": set(),
    "metrics": set(),
    "storage": {"domain", "storage"},
    "upstream": {"domain", "upstream"},
    "services": {"domain", "storage", "upstream", "metrics", "services"},
    "listen": {"domain"},
    "grpc": {"domain", "services", "grpc", "proto", "metrics", "correlation", "listen"},
    "web": {"domain", "services", "web", "metrics", "correlation", "listen"},
    # The simulator sends its webhooks with upstream's sender (httpx lives there).
    "sim": {"domain", "sim", "web", "upstream"},
    "systemd": set(),
    "correlation": set(),
    "client": {"proto"},
}
# Where each third-party library may be imported (module path prefixes).
OWNERS = {
    "httpx": ("upstream",),
    "sqlite3": ("storage",),
    "psycopg": ("storage/postgres",),
    "psycopg_pool": ("storage/postgres",),
    # client.py is the example of the generated stubs from plain asyncio: it needs them.
    "grpclib": ("grpc", "client.py"),
    "trio_asyncio": ("grpc",),
    "google": ("grpc",),
    "betterproto2": ("grpc", "client.py"),
    "hypercorn": ("web/server.py",),
    "starlette": ("web", "sim"),
    "prometheus_client": ("metrics.py",),
    # The WebSocket client: `marveld client watch --ws` (the daemon serves with hypercorn).
    "trio_websocket": ("client.py",),
    "argon2": ("services/security.py",),
    "jwt": ("services/security.py",),
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "proto" not in p.relative_to(PACKAGE).parts)


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path) -> None:
    relative = path.relative_to(PACKAGE)
    part = relative.parts[0].removesuffix(".py")
    for name in imported(path):
        top, _, rest = name.partition(".")
        if top == "marveld" and part in INTERNAL:
            target = rest.split(".")[0]
            allowed = INTERNAL[part] | {"", "__init__"}
            assert target in allowed, f"{relative} imports marveld.{target}"
        if top in OWNERS:
            assert str(relative).startswith(OWNERS[top]), f"{relative} imports {top}"
