"""The composition root: builds every part from the settings and runs them in one nursery."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import trio

from marveld.config import RateLimitSettings, Settings, ShutdownSettings
from marveld.domain.cache_policy import CachePolicy
from marveld.grpc import convert
from marveld.grpc.admin import admin_service
from marveld.grpc.connections import ConnectionLimits
from marveld.grpc.handlers import auth_service, character_service, user_service
from marveld.grpc.notifications import notification_service
from marveld.grpc.server import GrpcFace
from marveld.listen import Drain
from marveld.malloc import HeapReturn
from marveld.metrics import Metrics
from marveld.services.catalog import LocalCatalog
from marveld.services.characters import CharacterService
from marveld.services.guard import BreakerState, CallBudget, CircuitBreaker
from marveld.services.leader import Duty, Leadership
from marveld.services.memory_tier import MemoryTier
from marveld.services.notifications import NotificationService, NotificationSettings
from marveld.services.poller import Poller
from marveld.services.ratelimit import (
    LoginThrottle,
    RateLimiter,
    RateLimits,
    SharedLoginThrottle,
    Throttle,
)
from marveld.services.readiness import Readiness, watch_database
from marveld.services.security import PasswordHasher, TokenIssuer, utc_now
from marveld.services.sync import SyncService
from marveld.services.users import UserService
from marveld.services.webhooks import WebhookService
from marveld.storage import Store
from marveld.storage.coordination import Hearing, SharedRates, Signal
from marveld.systemd import Notifier
from marveld.upstream import MarvelClient, RetryPolicy
from marveld.web.app import build_app
from marveld.web.gateway import gateway_routes
from marveld.web.notifications import PATH as NOTIFICATIONS_PATH
from marveld.web.notifications import notifications_app
from marveld.web.server import ConnectionLimits as HttpConnectionLimits
from marveld.web.server import serve_asgi
from marveld.web.webhooks import webhook_route

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where a running daemon listens (the real ports, also when configured as 0)."""

    grpc_port: int
    http_port: int


async def run(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utc_now,
    monotonic: Callable[[], float] = time.monotonic,
    hasher: PasswordHasher | None = None,
    notifier: Notifier | None = None,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[Endpoints] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run marveld until cancelled, or with ``stop``, until it is set and a graceful stop
    (:func:`_drain`) is over. Readiness reports the bound ports (and, under systemd, sends
    READY=1 and feeds the watchdog through ``notifier``)."""
    notifier = notifier or Notifier(None)
    # hpack (under h2, under grpclib and hypercorn) logs every header it encodes or decodes
    # at DEBUG, bearer tokens included: never below INFO, whatever log.level says.
    logging.getLogger("hpack").setLevel(max(logging.INFO, logging.getLogger("hpack").level))
    metrics = Metrics()
    secrets, up, cache = settings.secrets, settings.upstream, settings.cache
    shared = settings.database.url is not None  # PostgreSQL: replicas may share it
    replica = settings.replica.replica_id(settings.grpc.listen.port)
    budget = CallBudget(
        daily=up.daily_budget,
        poller_reserve=up.poller_reserve,
        clock=clock,
        on_change=metrics.upstream_budget_remaining.set,
        shared=shared,
    )
    g = settings.grpc
    heap = HeapReturn()  # the ports count closed connections; after a flood, it trims
    grpc = GrpcFace(
        g.listen.host,
        g.listen.port,
        metrics,
        ConnectionLimits(
            max_connections=g.max_connections,
            handshake_timeout=g.handshake_timeout,
            idle_timeout=g.idle_timeout,
            keepalive_time=g.keepalive_time,
            keepalive_timeout=g.keepalive_timeout,
            max_concurrent_streams=g.max_concurrent_streams,
            max_header_list_size=g.max_header_list_size,
            max_resets=g.max_resets,
        ),
        on_close=heap.closed,
    )

    def breaker_changed(serving: bool) -> None:
        metrics.breaker_changed(serving)
        grpc.set_serving("marvel.v1.CharacterService", serving)

    breaker = CircuitBreaker(
        failures=up.breaker_failures,
        cooldown=up.breaker_cooldown,
        clock=monotonic,
        on_change=breaker_changed,
    )
    async with (
        Store.connect(
            path=settings.database.path,
            url=settings.database.url,
            password=secrets.database_password,
            pool_size=settings.database.pool_size,
            replica=replica,
        ) as store,
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
            before_attempt=budget.spend,
        ) as marvel,
    ):
        tokens = TokenIssuer(
            secrets.jwt_secret,
            issuer=settings.auth.issuer,
            ttl_seconds=settings.auth.token_ttl,
            previous_secrets=secrets.jwt_previous_secrets,
        )
        log.info(
            "access tokens signed with key %s; keys accepted: %s",
            tokens.signing_key_id,
            ", ".join(tokens.verifying_key_ids),
        )
        limits, throttle = _limits(settings.ratelimit, monotonic, store.coordination.rates())
        users = UserService(
            store, hasher or PasswordHasher(), tokens, clock, limits=limits, throttle=throttle
        )
        n = settings.notifications
        notifications = NotificationService(
            store,
            users,
            metrics,
            clock,
            NotificationSettings(
                queue_size=n.queue_size,
                heartbeat=n.heartbeat,
                retention=n.retention,
                sweep_interval=n.sweep_interval,
            ),
            shared=shared,
        )
        memory = MemoryTier(
            max_entries=cache.memory_entries,
            max_bytes=cache.memory_megabytes * MIB,
            on_evict=metrics.cache_evictions.inc,
        )
        characters = CharacterService(
            store,
            marvel,
            breaker,
            memory,
            metrics,
            clock,
            policy=CachePolicy(
                ttl=cache.ttl,
                stale_while_revalidate=cache.stale_while_revalidate,
                stale_if_error=cache.stale_if_error,
                negative_ttl=cache.negative_ttl,
                etag_max_age=settings.upstream.etag_max_age,
            ),
            encode=convert.encode_answer,
            sweep_interval=cache.sweep_interval,
            catalog=LocalCatalog(store, clock),
            on_stored=notifications.poke,
            fill_lease=cache.fill_lease,
        )
        # Every applied change drops the answers it made stale from the memory tier too.
        sync = SyncService(
            store,
            marvel,
            metrics,
            clock,
            forget_cached=characters.forget,
            on_committed=notifications.poke,
            etag_max_age=settings.upstream.etag_max_age,
        )
        webhooks = WebhookService(
            store, marvel, sync, metrics, clock, secret=secrets.webhook_secret
        )
        grpc.serve(
            auth_service(users),
            user_service(users),
            character_service(users, characters),
            admin_service(users, characters, sync),
            notification_service(notifications),
        )
        # Streams end with their resume cursor before the gRPC server closes.
        grpc.before_close(lambda: notifications.end_streams("grpc", grace=2.0))

        # /readyz: every check passes. The breaker check is the same condition that marks
        # marvel.v1.CharacterService NOT_SERVING in grpc.health.v1.Health.
        listening = trio.Event()
        readiness = Readiness()
        # The database check is the watcher's last ping (below), every 2 s: a probe of
        # /readyz never waits on the pool, and probes cannot load the database.
        database_ready = readiness.flag("database")
        readiness.add("listeners", listening.is_set)
        readiness.add("breaker", lambda: breaker.state is BreakerState.CLOSED)
        accepting = readiness.flag("accepting")  # false from the start of a graceful stop
        signals_ready = readiness.flag("signals") if shared else None

        def hearing_changed(state: Hearing) -> None:
            """Not ready while other replicas' signals may go unheard; the character
            service then reads the database rather than its memory tier."""
            on = state is Hearing.LISTENING
            metrics.listening.set(on)
            grpc.set_listening(on)
            characters.hearing(state)
            if signals_ready is not None:
                signals_ready(on)

        def signalled(signal: Signal) -> None:
            if signal.keys or signal.every_key:
                characters.forget(signal.keys, every_key=signal.every_key)
                metrics.signals.labels(kind="forget_all" if signal.every_key else "forget").inc()
            if signal.position is not None:
                notifications.heard(signal.position)
                metrics.signals.labels(kind="notifications").inc()
            if signal.webhook:
                webhooks.ring()
                metrics.signals.labels(kind="webhook").inc()

        # What runs once for the cluster: on the leader (on SQLite, this one process).
        duties: list[tuple[str, Duty]] = [
            ("the cache sweeps", characters.sweeps),
            ("the notification sweeps", notifications.sweeps),
            ("the webhook worker", webhooks.run),
        ]
        if settings.poller.enabled:
            poller = Poller(sync, clock, interval=settings.poller.interval)
            duties.append(("the poller", poller.run))
        else:
            log.info("poller disabled: TriggerSync and webhooks bring changes")
        leadership = Leadership(store.coordination, duties, on_change=metrics.leader.set)

        # Requests are served during the first sync (read-through), so it is reported
        # but does not make the daemon unready.
        readiness.add("first_sync", sync.first_sync_done)
        http_app = build_app(
            metrics,
            readiness.check,
            routes=[webhook_route(webhooks)],
            gateway=gateway_routes(users, characters),
            websockets={NOTIFICATIONS_PATH: notifications_app(notifications)},
            informational={"first_sync"},
        )
        drains = Drain(), Drain()  # the gRPC port's, the HTTP port's
        async with trio.open_nursery() as nursery:
            await nursery.start(readiness.run)
            await nursery.start(store.coordination.watch, signalled, hearing_changed)
            await nursery.start(budget.keep, store)
            await nursery.start(characters.run)
            await nursery.start(notifications.run)
            grpc_port = await nursery.start(grpc.run, drains[0])
            h = settings.http
            http_port = await nursery.start(
                partial(
                    serve_asgi,
                    limits=HttpConnectionLimits(
                        h.max_connections, h.handshake_timeout, h.idle_timeout
                    ),
                    request_limits=False,  # http_app applies them inside its access log
                    websocket_ping_interval=n.heartbeat,
                    on_close=heap.closed,
                    drain=drains[1],
                ),
                http_app,
                h.listen.host,
                h.listen.port,
            )
            await nursery.start(leadership.run)
            await nursery.start(heap.run)
            metrics.identify(replica)
            listening.set()
            log.info(
                "marveld ready: grpc port %d, http port %d (replica %s)",
                grpc_port,
                http_port,
                replica,
            )

            def database_changed(reachable: bool) -> None:
                database_ready(reachable)
                grpc.set_database_serving(reachable)

            await nursery.start(partial(watch_database, store.ping, database_changed))
            await nursery.start(notifier.keep_watchdog)
            notifier.ready(f"serving: grpc port {grpc_port}, http port {http_port}")
            task_status.started(Endpoints(grpc_port=grpc_port, http_port=http_port))
            if stop is not None:
                await stop.wait()

                def not_ready() -> None:
                    accepting(False)
                    grpc.set_draining()

                await _drain(settings.shutdown, not_ready, drains, notifications)
                nursery.cancel_scope.cancel()


async def _drain(
    cfg: ShutdownSettings,
    not_ready: Callable[[], None],
    drains: tuple[Drain, Drain],
    notifications: NotificationService,
) -> None:
    """A graceful stop: not ready at once (/readyz 503, health NOT_SERVING) while still
    serving for ``shutdown.drain_delay``, so load balancers move away first; then both
    ports stop taking connections and calls (gRPC: GOAWAY), notification streams and
    WebSockets end with their resume cursor, and the calls under way have
    ``shutdown.grace`` to finish."""
    not_ready()
    log.info(
        "stopping gracefully: not ready now, serving %g s more (shutdown.drain_delay), then "
        "refusing new calls; calls under way get %g s (shutdown.grace)",
        cfg.drain_delay,
        cfg.grace,
    )
    await trio.sleep(cfg.drain_delay)
    for drain in drains:
        drain.request()
    for drain in drains:
        await drain.refusing.wait()
    with trio.move_on_after(cfg.grace) as grace:
        await notifications.end_streams("websocket", grace=cfg.grace)
        for drain in drains:
            await drain.finished.wait()
    if grace.cancelled_caught:
        log.warning(
            "shutdown.grace (%g s) ran out with calls or connections still open: they are cut",
            cfg.grace,
        )
    else:
        log.info("drained: every call answered, every connection closed")


def _limits(
    cfg: RateLimitSettings, clock: Callable[[], float], shared: SharedRates | None
) -> tuple[RateLimits, Throttle | None]:
    """Request limits per replica; the login throttle per replica, or the cluster's when
    other replicas share the database (``shared``)."""
    if not cfg.enabled:
        log.warning("rate limits and the login throttle are off (ratelimit.enabled = false)")
        return RateLimits(), None
    window = cfg.login_window
    per_account = RateLimiter(cfg.login_failures / window, cfg.login_failures, clock)
    per_address = RateLimiter(
        cfg.address_login_failures / window, cfg.address_login_failures, clock
    )
    limits = RateLimits(
        per_user=RateLimiter(cfg.user_rate, cfg.user_burst, clock),
        per_address=RateLimiter(cfg.anonymous_rate, cfg.anonymous_burst, clock),
    )
    if shared is not None:
        throttle: Throttle = SharedLoginThrottle(
            shared, per_account=per_account, per_address=per_address
        )
    else:
        throttle = LoginThrottle(per_account=per_account, per_address=per_address)
    return limits, throttle
