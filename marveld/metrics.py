"""Prometheus metrics. The one place that knows prometheus_client.

The composition root builds one :class:`Metrics` on its own registry and passes it to the
parts that count things; the HTTP face serves :meth:`Metrics.exposition`.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0)
_SYNC_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class Metrics:
    """Every metric marveld exports, on a registry of its own (no global state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.cache_requests = Counter(
            "marveld_cache_requests",
            "Cache look-ups by tier and result (hit, miss, stale).",
            ["tier", "result"],
            registry=self.registry,
        )
        self.cache_entries = Gauge(
            "marveld_cache_entries",
            "Answers held, by tier (the SQLite tier as of the last sweep).",
            ["tier"],
            registry=self.registry,
        )
        self.cache_evictions = Counter(
            "marveld_cache_evictions",
            "Answers evicted from the memory tier to stay within its bounds.",
            registry=self.registry,
        )
        self.upstream_budget_remaining = Gauge(
            "marveld_upstream_budget_remaining",
            "Upstream calls left in today's budget (UTC day).",
            registry=self.registry,
        )
        self.upstream_breaker_open = Gauge(
            "marveld_upstream_breaker_open",
            "1 while the upstream circuit breaker is open or half-open, else 0.",
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "marveld_upstream_requests",
            "HTTP attempts to the Marvel API by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "marveld_upstream_request_duration_seconds",
            "Duration of HTTP attempts to the Marvel API.",
            buckets=_UPSTREAM_BUCKETS,
            registry=self.registry,
        )

        self.rpc_started = Counter(
            "grpc_server_started",
            "RPCs started on the server.",
            ["grpc_service", "grpc_method"],
            registry=self.registry,
        )
        self.rpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from receiving an RPC's request to sending its status.",
            ["grpc_service", "grpc_method"],
            buckets=_RPC_BUCKETS,
            registry=self.registry,
        )
        self.sync_runs = Counter(
            "marveld_sync_runs",
            "Syncs with the upstream by kind (bootstrap, poll) and outcome (changed, unchanged,"
            " not_modified, failed).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.sync_duration = Histogram(
            "marveld_sync_duration_seconds",
            "Duration of syncs with the upstream (polls and the bootstrap), failed ones too.",
            ["kind"],
            buckets=_SYNC_BUCKETS,
            registry=self.registry,
        )
        self.characters_changed = Counter(
            "marveld_characters_changed",
            "Characters added or updated, by change and by the path that brought them"
            " (bootstrap, poll, webhook, read_through).",
            ["change", "source"],
            registry=self.registry,
        )
        self.events_appended = Counter(
            "marveld_events_appended",
            "Events appended to the event log, by type.",
            ["type"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "marveld_webhook_deliveries",
            "Webhook deliveries by outcome (accepted, duplicate, refused, invalid,"
            " not_configured, applied, failed).",
            ["outcome"],
            registry=self.registry,
        )

        self.subscribers = Gauge(
            "marveld_notification_subscribers",
            "Live notification subscribers, by channel (grpc, websocket).",
            ["channel"],
            registry=self.registry,
        )
        self.notifications_created = Counter(
            "marveld_notifications_created",
            "Notifications the saga wrote, by type (the event type).",
            ["type"],
            registry=self.registry,
        )
        self.notifications_delivered = Counter(
            "marveld_notifications_delivered",
            "Notifications sent to a client, by channel (grpc, websocket, polling).",
            ["channel"],
            registry=self.registry,
        )
        self.subscribers_evicted = Counter(
            "marveld_notification_subscribers_evicted",
            "Live subscribers closed because their queue was full (too slow), by channel.",
            ["channel"],
            registry=self.registry,
        )
        self.notification_lag = Histogram(
            "marveld_notification_delivery_lag_seconds",
            "From the commit of an event to the live send of its notification.",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.leader = Gauge(
            "marveld_leader",
            "1 while this replica is the leader (runs the poller, the sweeps and the webhook"
            " worker for the cluster), else 0.",
            registry=self.registry,
        )
        self.listening = Gauge(
            "marveld_listening",
            "1 while this replica hears the others' signals (PostgreSQL LISTEN), else 0.",
            registry=self.registry,
        )
        self.signals = Counter(
            "marveld_signals_received",
            "Signals heard from other replicas, by kind (forget, forget_all, notifications,"
            " webhook).",
            ["kind"],
            registry=self.registry,
        )

    def identify(self, replica_id: str) -> None:
        """``marveld_replica_info{replica_id=...} 1``: which replica these series are of."""
        info = Gauge(
            "marveld_replica_info",
            "Always 1; its label names this replica (MARVELD_REPLICA_ID).",
            ["replica_id"],
            registry=self.registry,
        )
        info.labels(replica_id=replica_id).set(1)

    def cache_result(self, tier: str, result: str) -> None:
        self.cache_requests.labels(tier=tier, result=result).inc()

    def upstream_attempt(self, outcome: str, seconds: float) -> None:
        """The upstream client's ``on_request`` hook."""
        self.upstream_requests.labels(outcome=outcome).inc()
        self.upstream_duration.observe(seconds)

    def rpc_start(self, service: str, method: str) -> None:
        self.rpc_started.labels(grpc_service=service, grpc_method=method).inc()

    def rpc_end(self, service: str, method: str, code: str, seconds: float) -> None:
        self.rpc_handled.labels(grpc_service=service, grpc_method=method, grpc_code=code).inc()
        self.rpc_seconds.labels(grpc_service=service, grpc_method=method).observe(seconds)

    def breaker_changed(self, serving: bool) -> None:
        self.upstream_breaker_open.set(0 if serving else 1)

    def sync_run(self, kind: str, outcome: str, seconds: float) -> None:
        self.sync_runs.labels(kind=kind, outcome=outcome).inc()
        self.sync_duration.labels(kind=kind).observe(seconds)

    def batch_applied(self, source: str, added: int, updated: int, events: Sequence[str]) -> None:
        """One applied batch: how many characters it added and updated, and the types of
        the events it appended."""
        if added:
            self.characters_changed.labels(change="added", source=source).inc(added)
        if updated:
            self.characters_changed.labels(change="updated", source=source).inc(updated)
        for kind, count in Tally(events).items():
            self.events_appended.labels(type=kind).inc(count)

    def webhook_delivery(self, outcome: str) -> None:
        self.webhook_deliveries.labels(outcome=outcome).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
