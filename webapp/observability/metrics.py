"""Prometheus metrics: the request counter and histogram the dashboards and alerts read, pool and breaker
gauges, summed across gunicorn's workers. Built by create_app, never at import time."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_flask_exporter import PrometheusMetrics

# Seconds: from the fastest answer (a cached read) up to the default 10 s deadline, the slowest.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds a request waited between the proxy and a worker: what queue-time autoscalers read.
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Pool gauges are refreshed at most this often per worker: stats() takes the pool's lock.
POOL_SAMPLE_SECONDS = 1.0
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """The request metrics plus pool and breaker gauges, in a registry of this app's own."""

    content_type = CONTENT_TYPE_LATEST  # of render()'s text

    def __init__(self, multiproc_dir: str | None = None):
        # Trap: prometheus_client picks single- or multi-process storage when it is first
        # imported, from PROMETHEUS_MULTIPROC_DIR: webapp.gunicorn.settings sets it before then.
        self.multiproc_dir = multiproc_dir
        self.registry = CollectorRegistry()
        # Defined with prometheus_client, not the exporter's per-request hooks: the names and labels
        # deploy/'s dashboard and alerts query differ from the exporter's defaults (docs/operations.md, "Metrics").
        self.requests = Counter(
            "http_requests_total", "HTTP requests by route template and status",
            ["method", "path", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "path"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        # No labels: one series per worker file however many routes; observed only when a proxy
        # sent X-Request-Start, so an instance exposed directly shows none rather than zeros.
        self.queue = Histogram(
            "http_request_queue_seconds", "Time from the proxy receiving a request to a worker starting it",
            buckets=QUEUE_BUCKETS, registry=self.registry,
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
        self.scrapes_refused = Counter(
            "metrics_scrapes_refused_total", "Requests for /metrics refused, by reason",
            ["reason"], registry=self.registry,
        )
        # The tracing exporter never makes a request wait: when the collector is down or slow its
        # bounded queue fills and spans are dropped, here counted (webapp/observability/tracing.py).
        self.spans_dropped = Counter(
            "otel_spans_dropped_total", "Finished spans never exported, by reason (queue_full, export_failed)",
            ["reason"], registry=self.registry,
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

    def observe_queue(self, seconds: float) -> None:
        """Record how long a request waited for a worker (from the proxy's X-Request-Start)."""
        self.queue.observe(seconds)

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

    def scrape_refused(self, reason: str) -> None:
        """Count a refused /metrics request (reason: bad_token, proxied, not_loopback)."""
        self.scrapes_refused.labels(reason).inc()

    def spans_dropped_by(self, reason: str, count: int = 1) -> None:
        """Count spans lost on the way to the collector (reason: queue_full, export_failed)."""
        self.spans_dropped.labels(reason).inc(count)

    def render(self) -> bytes:
        """The text exposition: this process's registry, or every worker's files when multi-process."""
        if self.multiproc_dir:
            registry = CollectorRegistry()
            LockedMultiProcessCollector(registry, path=self.multiproc_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


LOCK_FILE = "archive.lock"  # not *.db: the collector reads every *.db in the folder


@contextmanager
def metrics_dir_lock(path: str, how: int) -> Iterator[None]:
    """flock on the folder's lock file: shared to read the files, exclusive to fold a dead worker's in."""
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, how)  # released with the descriptor
        yield
    finally:
        os.close(fd)


class LockedMultiProcessCollector(multiprocess.MultiProcessCollector):
    """prometheus_client's collector, reading while no dead worker's files are being folded in.

    Under gunicorn the master folds each dead worker's files into an archive
    (webapp/gunicorn/metrics_files.py). Between the archive's rename and the dead file's removal a
    reader would count the dead worker twice (a counter going up then down: a reset, to
    Prometheus); a file removed between the reader's listing and its read would fail the scrape.
    """

    def __init__(self, registry: Any, path: str):
        super().__init__(registry, path=path)
        self.path = path

    def collect(self) -> Any:
        with metrics_dir_lock(self.path, fcntl.LOCK_SH):
            return list(super().collect())


def _version() -> str:
    try:
        return metadata.version("webapp")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"
