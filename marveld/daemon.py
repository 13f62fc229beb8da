"""The composition root: builds every part from the settings and runs them in one nursery."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

import trio

from marveld.config import Settings
from marveld.grpc.admin import admin_service
from marveld.grpc.handlers import auth_service, character_service, user_service
from marveld.grpc.server import GrpcFace
from marveld.metrics import Metrics
from marveld.services.catalog import LocalCatalog
from marveld.services.characters import CharacterService
from marveld.services.poller import Poller
from marveld.services.security import PasswordHasher, TokenIssuer, utc_now
from marveld.services.sync import SyncService
from marveld.services.users import UserService
from marveld.services.webhooks import WebhookService
from marveld.storage import Store
from marveld.upstream import MarvelClient, RetryPolicy
from marveld.web.app import build_app
from marveld.web.server import serve_asgi
from marveld.web.webhooks import webhook_route

log = logging.getLogger(__name__)


def forget_nothing(keys: Collection[str]) -> None:
    """Where the memory cache tier drops the keys a change invalidated in SQLite; until
    that tier exists there is nothing to drop."""


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where a running daemon listens (the real ports, also when configured as 0)."""

    grpc_port: int
    http_port: int


async def run(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utc_now,
    hasher: PasswordHasher | None = None,
    task_status: trio.TaskStatus[Endpoints] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run marveld until cancelled. Readiness reports the bound ports."""
    metrics = Metrics()
    secrets = settings.secrets
    up = settings.upstream
    async with (
        Store.open(settings.database.path) as store,
        MarvelClient.open(
            base_url=up.url,
            public_key=secrets.marvel_public_key,
            private_key=secrets.marvel_private_key,
            timeout=up.timeout,
            retry=RetryPolicy(
                max_attempts=up.max_attempts,
                backoff_initial=up.backoff_initial,
                backoff_max=up.backoff_max,
            ),
            on_request=metrics.upstream_attempt,
        ) as marvel,
    ):
        tokens = TokenIssuer(
            secrets.jwt_secret, issuer=settings.auth.issuer, ttl_seconds=settings.auth.token_ttl
        )
        users = UserService(store, hasher or PasswordHasher(), tokens, clock)
        # The memory cache tier plugs in here: forget_cached drops the keys each applied
        # change invalidated in SQLite (CacheRepo.put returns those of read-throughs).
        sync = SyncService(store, marvel, metrics, clock, forget_cached=forget_nothing)
        characters = CharacterService(
            store,
            marvel,
            metrics,
            clock,
            ttl_seconds=settings.cache.ttl,
            catalog=LocalCatalog(store, clock),
        )
        webhooks = WebhookService(
            store, marvel, sync, metrics, clock, secret=secrets.webhook_secret
        )
        grpc = GrpcFace(
            [
                auth_service(users),
                user_service(users),
                character_service(users, characters),
                admin_service(users, sync),
            ],
            settings.grpc.listen.host,
            settings.grpc.listen.port,
        )

        async def ready() -> dict[str, bool]:
            try:
                await store.ping()
                first_sync = await sync.first_sync_done()
            except Exception:
                return {"database": False, "first_sync": False}
            return {"database": True, "first_sync": first_sync}

        # Requests are served during the first sync (read-through), so it is reported
        # but does not make the daemon unready.
        http_app = build_app(
            metrics, ready, routes=[webhook_route(webhooks)], informational={"first_sync"}
        )
        async with trio.open_nursery() as nursery:
            grpc_port = await nursery.start(grpc.run)
            http_port = await nursery.start(
                serve_asgi, http_app, settings.http.listen.host, settings.http.listen.port
            )
            await nursery.start(webhooks.run)
            if settings.poller.enabled:
                poller = Poller(sync, clock, interval=settings.poller.interval)
                await nursery.start(poller.run)
            else:
                log.info("poller disabled: TriggerSync and webhooks bring changes")
            # The notifier joins this nursery with the issue that builds it.
            log.info("marveld ready: grpc port %d, http port %d", grpc_port, http_port)
            task_status.started(Endpoints(grpc_port=grpc_port, http_port=http_port))
