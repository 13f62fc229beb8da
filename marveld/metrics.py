"""Prometheus metrics. The one place that knows prometheus_client.

The composition root builds one :class:`Metrics` on its own registry and passes it to the
parts that count things; the HTTP face serves :meth:`Metrics.exposition`.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

_UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


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

    def cache_result(self, tier: str, result: str) -> None:
        self.cache_requests.labels(tier=tier, result=result).inc()

    def upstream_attempt(self, outcome: str, seconds: float) -> None:
        """The upstream client's ``on_request`` hook."""
        self.upstream_requests.labels(outcome=outcome).inc()
        self.upstream_duration.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
