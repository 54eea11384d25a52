"""Structured JSON logs and Prometheus metrics: built by create_app, never at import time."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from importlib import metadata
from json.encoder import encode_basestring_ascii as _quote  # json's C string escaper
from typing import IO, Any

from flask import g, has_request_context
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_flask_exporter import PrometheusMetrics
from pythonjsonlogger.json import JsonFormatter

HANDLER_NAME = "webapp-json"
# Seconds; covers a ~1 ms cached read up to the 10 s default deadline.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Pool gauges are refreshed at most this often per worker: stats() takes the pool's lock.
POOL_SAMPLE_SECONDS = 1.0
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# From a "?" to the end of the message: gunicorn quotes a rejected request line raw, so the query
# string may hold quotes and spaces, and nothing tells where it ends. Losing the rest of a rare
# gunicorn message is cheaper than a token in the log. ("...out of memory?" has nothing after it.)
_QUERY_STRING = re.compile(r"\?.+", re.DOTALL)


class RequestIdFilter(logging.Filter):
    """Stamp every record logged during a request with that request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id") and has_request_context():
            record.request_id = g.get("request_id")
        return True


class RedactQueryStrings(logging.Filter):
    """Cut query strings out of gunicorn's own messages (e.g. "Invalid request line 'GET /x?token=...'").

    Our request line never logs a query string; gunicorn's error log quotes the raw request line
    when it rejects one. Its messages are rare, so re-rendering them here costs nothing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("gunicorn"):
            record.msg = _QUERY_STRING.sub("?<redacted>", record.getMessage())
            record.args = None
        return True


def json_formatter() -> JsonFormatter:
    """The one formatter for app and gunicorn lines: time (UTC, ms), level, logger, pid, message, extras."""
    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
    )
    # pid tells gunicorn's workers apart; milliseconds order the lines of one shutdown.
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


class StdoutHandler(logging.StreamHandler):
    """A StreamHandler on sys.stdout as it is at each write, not as it was when logging was set up.

    Test runners swap sys.stdout per test and close the old one; a handler holding it would
    fail on the next line (an atexit hook's, say) with "I/O operation on closed file".
    """

    @property
    def stream(self) -> IO[str]:
        return sys.stdout

    @stream.setter
    def stream(self, _ignored: IO[str]) -> None:
        pass


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A stdout handler that writes one JSON object per line, with request ids and no query strings."""
    handler = logging.StreamHandler(stream) if stream is not None else StdoutHandler()
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactQueryStrings())
    return handler


def configure_logging(level: str, stream: IO[str] | None = None) -> None:
    """Send every logger's records to one JSON handler on stdout at `level` (idempotent)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        # create_app may run twice in one process (tests), and under gunicorn the master's
        # handler (gunicorn_logconfig) is inherited by every worker: replace, never stack.
        root.removeHandler(handler)
    root.addHandler(json_handler(stream))
    root.setLevel(level.upper())
    # Werkzeug's dev-server access log would duplicate our request line.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """logging.config dict for gunicorn's master: its own log and ours, as JSON lines on stdout.

    gunicorn's loggers propagate to the root handler, which is named like configure_logging's,
    so a worker's create_app replaces it instead of printing every line twice.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {HANDLER_NAME: {"()": "webapp.observability.json_handler"}},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
        "root": {"level": level.upper(), "handlers": [HANDLER_NAME]},
    }


class RequestLog:
    """Writes the one line per request: the hot path of logging, built for thousands a second.

    Going through logging (a LogRecord, two filters, python-json-logger walking the record's
    attributes) measured ~60 us a request, as much as a Postgres round trip. Here: one
    formatted string and one write, same JSON line. In a busy worker every step is cache-cold, so
    the fixed part of the line (time to the second, level, logger, pid) is built once a second
    (strftime alone measured ~5 us per call under load).
    """

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self._second = -1
        self._stamp = ""  # '{"time": "2026-11-27T05:39:28.' for the current second
        self._rest = ""  # 'Z", "level": "INFO", "logger": ..., "pid": ..., "message": "request"'

    def write(
        self,
        method: str,
        path: str,
        raw_path: str,
        status: int,
        duration_ms: float,
        request_id: str,
        remote_addr: str | None,
        *,
        quiet: bool,
    ) -> None:
        """Log one request line at a level that says what it means: 5xx error, else info; probes debug.

        Probes (health, metrics) stay at DEBUG whatever their status: a readiness 503 during a
        shutdown or an outage is the probe doing its job, and they arrive every few seconds.
        """
        level = logging.DEBUG if quiet else logging.ERROR if status >= 500 else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        handler = _json_handler()
        if level != logging.INFO or handler is None or handler.level > level:
            # Errors go through logging proper, so every handler (an alerting one too) sees them.
            fields = {
                "method": method, "path": path, "raw_path": raw_path, "status": status,
                "duration_ms": duration_ms, "request_id": request_id, "remote_addr": remote_addr,
            }
            self.logger.log(level, "request", extra=fields)
            return
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            self._stamp = '{"time": "' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + "."
            # The pid is re-read with the second (create_app, hence this object, is built after fork).
            self._rest = (
                f'Z", "level": "INFO", "logger": {json.dumps(self.logger.name)}, "pid": {os.getpid()}, '
                '"message": "request"'
            )
        # Formatted by hand, the same JSON as the encoder's: every string through json's own
        # escaper (quotes, backslashes, control characters; ASCII-only, like ensure_ascii), the
        # numbers as json writes them. 0.5 us against 1.9 us for encoding a dict of the same
        # fields (bench/README.md); tests/unit/test_request_log.py parses every shape back.
        addr = _quote(remote_addr) if remote_addr is not None else "null"
        text = (
            f'{self._stamp}{int(now % 1 * 1000):03d}{self._rest}, "method": {_quote(method)}, '
            f'"path": {_quote(path)}, "raw_path": {_quote(raw_path)}, "status": {int(status)}, '
            f'"duration_ms": {float(duration_ms)!r}, "request_id": {_quote(request_id)}, "remote_addr": {addr}}}\n'
        )
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(text)
            stream.flush()  # one line per write, as logging does: a crash loses no request line
        finally:
            handler.release()


def _json_handler() -> logging.StreamHandler | None:  # type: ignore[type-arg,unused-ignore]
    """The root logger's JSON handler (configure_logging installs exactly one)."""
    for handler in logging.getLogger().handlers:
        if handler.get_name() == HANDLER_NAME and isinstance(handler, logging.StreamHandler):
            return handler
    return None


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
            # The interval is checked here, not by a call to sample_pool: this runs per request.
            now = time.monotonic()
            if now - self._pool_sampled_at >= POOL_SAMPLE_SECONDS:
                self._refresh_pool(self._pool_stats, now)

    def watch_pool(self, stats: Callable[[], dict[str, int]]) -> None:
        """Sample the pool gauges from stats() as requests finish (at most once a second)."""
        # Piggybacks on observe_request rather than a hook or a thread of its own: a request
        # hook costs every request a call, and a thread would sample an idle worker for nothing.
        self._pool_stats = stats

    def sample_pool(self, stats: Callable[[], dict[str, int]], *, every: float = POOL_SAMPLE_SECONDS) -> None:
        """Refresh the pool gauges from stats() at most once per `every` seconds."""
        now = time.monotonic()
        if now - self._pool_sampled_at >= every:
            self._refresh_pool(stats, now)

    def _refresh_pool(self, stats: Callable[[], dict[str, int]], now: float) -> None:
        self._pool_sampled_at = now
        for state, value in stats().items():
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


def _version() -> str:
    try:
        return metadata.version("webapp")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"
