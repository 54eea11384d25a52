"""The service with one layer taken out at a time, to price each layer (bench.layers, bench.profile).

Built through create_app's own parameters (config, metrics), so every variant is the real
composition root with exactly one thing changed; nothing in webapp/ is patched.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from flask import Flask

from bench.servers import BASELINE_APP, OURS_APP
from webapp import create_app as create_service
from webapp.observability.metrics import Metrics
from webapp.settings import TracingSettings, load_config

LAYERS = ("log", "metrics")

# What bench.layers and bench.profile compare: name → the app spec gunicorn (or import_app) loads.
VARIANTS = {
    "baseline": BASELINE_APP,
    "ours": OURS_APP,
    "-log_line": "bench.variants:create_app('log')",
    "-metrics": "bench.variants:create_app('metrics')",
    "-both": "bench.variants:create_app('log', 'metrics')",
    # No server-side prepared statements, as through a transaction pooler (auto turns them on here).
    "-prepared_statements": "bench.variants:create_app(prepared=False)",
    # No client-side cut-off for a silent database: prices the watchdog's arm/disarm per request.
    "-watchdog": "bench.variants:create_app(watchdog=False)",
    # Tracing on (the [tracing] extra), every request sampled or one in ten, exported to an OTLP sink
    # (BENCH_OTLP_ENDPOINT; bench.instructions starts one outside the measured process).
    "+tracing": "bench.variants:create_app(tracing=1.0)",
    "+tracing_0.1": "bench.variants:create_app(tracing=0.1)",
}
TRACING_VARIANTS = ("+tracing", "+tracing_0.1")


class NoWatchdog:
    """A watchdog that watches nothing (never cuts a connection)."""

    def arm(self, conn: object, fileno: int, seconds: float) -> None:
        pass

    def disarm(self, conn: object) -> bool:
        return False

    def close(self) -> None:
        pass


class NullMetrics(Metrics):
    """Metrics that record nothing: the request counter, histogram and pool gauges cost zero."""

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        pass


def create_app(
    *remove: str, prepared: bool | None = None, watchdog: bool = True, tracing: float | None = None,
) -> Flask:
    """The service without the named layers ("log": LOG_LEVEL=warning, "metrics": NullMetrics), with
    server-side prepared statements forced on or off (prepared=True/False; None: auto, as deployed),
    without the watchdog (watchdog=False), or traced with a sampling ratio (tracing=1.0, 0.1)."""
    unknown = set(remove) - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown layers {sorted(unknown)}; choose from {LAYERS}")
    config = dataclasses.replace(load_config(), db_prepared_statements=prepared)
    if tracing is not None:
        # Without a sink outside (bench.instructions'), one in this process: its work then counts with the app's.
        endpoint = (os.environ.get("BENCH_OTLP_ENDPOINT") or OtlpSink().endpoint) + "/v1/traces"
        config = dataclasses.replace(config, tracing=TracingSettings(endpoint, sampler="traceidratio",
                                                                     sampler_arg=tracing))
    if "log" in remove:
        config = dataclasses.replace(config, log_level="warning")  # the request line is INFO
    app = create_service(config, metrics=NullMetrics() if "metrics" in remove else None)
    if not watchdog:
        app.extensions["webapp"]["database"].watchdog = NoWatchdog()
    return app


class OtlpSink:
    """An OTLP/HTTP endpoint that takes every export and reads nothing in it: the collector the bench traces to."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
