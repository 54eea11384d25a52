"""Structured JSON logs and Prometheus metrics: built by create_app, never at import time."""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

from flask import g, has_request_context
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from pythonjsonlogger.json import JsonFormatter

_HANDLER_NAME = "webapp-json"
# Seconds; covers a ~1 ms cached read up to the 10 s default deadline.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestIdFilter(logging.Filter):
    """Stamp every record logged during a request with that request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id") and has_request_context():
            record.request_id = g.get("request_id")
        return True


def json_formatter() -> JsonFormatter:
    """The one formatter for app and gunicorn lines: time, level, logger, message, then extras."""
    return JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever sys.stdout is at emit time: test runners swap (and close) stdout."""

    @property  # type: ignore[override,unused-ignore]
    def stream(self) -> IO[str]:
        return sys.stdout

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass


def configure_logging(level: str, stream: IO[str] | None = None) -> None:
    """Send every logger's records to one JSON handler on stdout at `level` (idempotent)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)  # create_app may run twice in one process (tests)
    handler = logging.StreamHandler(stream) if stream else _StdoutHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Werkzeug's dev-server access log would duplicate our request line.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


class Metrics:
    """The seed's request metrics plus pool and breaker gauges, in a registry of this app's own."""

    def __init__(self, multiproc_dir: str | None = None):
        # Trap: prometheus_client picks single- or multi-process storage when it is first
        # imported, from PROMETHEUS_MULTIPROC_DIR; gunicorn.conf.py sets it before any import.
        self.multiproc_dir = multiproc_dir
        self.registry = CollectorRegistry()
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
        self._pool_sampled_at = 0.0

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        """Count one finished request and record its latency."""
        self.requests.labels(method, path, str(status)).inc()
        self.latency.labels(method, path).observe(seconds)

    def sample_pool(self, stats: dict[str, int], *, every: float = 1.0) -> None:
        """Refresh the pool gauges at most once per `every` seconds (they are cheap, not free)."""
        now = time.monotonic()
        if now - self._pool_sampled_at >= every:
            self._pool_sampled_at = now
            for state, value in stats.items():
                self.pool.labels(state).set(value)

    def set_breaker_state(self, name: str, state: str) -> None:
        """Export a breaker transition."""
        self.breaker.labels(name).set({"closed": 0, "half_open": 1, "open": 2}.get(state, 2))

    def render(self) -> bytes:
        """The text exposition: this process's registry, or every worker's files when multi-process."""
        if self.multiproc_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)
            return generate_latest(registry)
        return generate_latest(self.registry)


def log_request(logger: logging.Logger, fields: dict[str, Any], *, quiet: bool) -> None:
    """Log one request line at a level that says what it means (5xx error, else info; probes debug)."""
    status = fields["status"]
    level = logging.ERROR if status >= 500 else logging.DEBUG if quiet else logging.INFO
    if logger.isEnabledFor(level):
        logger.log(level, "request", extra=fields)
