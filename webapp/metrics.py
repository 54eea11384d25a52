"""Prometheus metrics: the seed's request counter and histogram, pool and breaker gauges, summed
across gunicorn's workers. Built by create_app, never at import time."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_flask_exporter import PrometheusMetrics

from webapp import metrics_files

# Seconds; covers a ~1 ms cached read up to the 10 s default deadline.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Pool gauges are refreshed at most this often per worker: stats() takes the pool's lock.
POOL_SAMPLE_SECONDS = 1.0
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The seed's request metrics plus pool and breaker gauges, in a registry of this app's own."""

    def __init__(self, multiproc_dir: str | None = None):
        # Trap: prometheus_client picks single- or multi-process storage when it is first
        # imported, from PROMETHEUS_MULTIPROC_DIR; gunicorn.conf.py sets it before any import.
        self.multiproc_dir = multiproc_dir
        self.registry = CollectorRegistry()
        # Defined with prometheus_client, not the exporter's per-request hooks: the seed's names
        # and labels differ from the exporter's defaults (see docs/operations.md, "Metrics").
        self.requests = Counter(
            "http_requests_total", "HTTP requests by route template and status",
            ["method", "path", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "path"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        # Multi-process gauges need a rule to combine workers: pool figures add up across
        # workers ("livesum" ignores dead ones); a breaker is as bad as its worst worker ("max").
        self.pool = Gauge(
            "db_pool_connections", "Postgres pool connections by state (size, available, waiting)",
            ["state"], registry=self.registry, multiprocess_mode="livesum",
        )
        self.breaker = Gauge(
            "circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            ["name"], registry=self.registry, multiprocess_mode="livemax",
        )
        # The exporter's one-line helper for the conventional "which build is running" gauge;
        # built without an app, so it adds no per-request hooks.
        PrometheusMetrics(app=None, path=None, export_defaults=False, registry=self.registry).info(
            "webapp_info", "The running build: always 1, labelled with versions",
            version=_version(), python=".".join(map(str, sys.version_info[:3])),
        )
        self._pool_stats: Callable[[], dict[str, int]] | None = None
        self._pool_sampled_at = 0.0
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        """Count one finished request and record its latency."""
        # Any token is a valid HTTP method: an unknown one shares a label, or a client could
        # mint unbounded time series. Children are cached: labels() costs a lock and a lookup.
        if method not in KNOWN_METHODS:
            method = "other"
        key = (method, path, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, path, str(status)), self.latency.labels(method, path))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if self._pool_stats is not None:
            # Sampled as requests finish rather than by a thread of its own, which would wake an idle worker.
            now = time.monotonic()
            if now - self._pool_sampled_at >= POOL_SAMPLE_SECONDS:
                self._refresh_pool(self._pool_stats, now)

    def watch_pool(self, stats: Callable[[], dict[str, int]]) -> None:
        """Sample the pool gauges from stats() as requests finish (at most once a second)."""
        self._pool_stats = stats

    def _refresh_pool(self, stats: Callable[[], dict[str, int]], now: float) -> None:
        self._pool_sampled_at = now
        for state, value in stats().items():
            self.pool.labels(state).set(value)

    def breaker_moved(self, name: str, old: str, new: str) -> None:
        """Export a breaker transition (a CircuitBreaker's on_transition)."""
        self.breaker.labels(name).set({"closed": 0, "half_open": 1, "open": 2}.get(new, 2))

    def render(self) -> bytes:
        """The text exposition: this process's registry, or every worker's files when multi-process."""
        if self.multiproc_dir:
            registry = CollectorRegistry()
            # Reads under the lock the master holds while it folds a dead worker's files (metrics_files).
            metrics_files.MultiProcessCollector(registry, path=self.multiproc_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


def _version() -> str:
    try:
        return metadata.version("webapp")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"
