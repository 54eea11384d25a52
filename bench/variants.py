"""The service with one layer taken out at a time, to price each layer (bench.layers, bench.profile).

Built through create_app's own override points (metrics=, database=, config=), so every variant
is the real composition root minus exactly one thing; nothing in webapp/ is patched.
Earlier "suggested fix" variants (a faster request line, per-connection statement_timeout,
cheaper BEGIN/COMMIT) were removed once the service adopted them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flask import Flask

from bench.servers import BASELINE_APP, OURS_APP
from webapp import create_app as create_service
from webapp.config import load_config
from webapp.db import Database
from webapp.observability import Metrics

LAYERS = ("log", "metrics", "deadline")

# What bench.layers and bench.profile compare: name → the app spec gunicorn (or import_app) loads.
VARIANTS = {
    "baseline": BASELINE_APP,
    "ours": OURS_APP,
    "-log_line": "bench.variants:create_app('log')",
    "-metrics": "bench.variants:create_app('metrics')",
    "-deadline": "bench.variants:create_app('deadline')",
    "-all_three": "bench.variants:create_app('log', 'metrics', 'deadline')",
}


class NullMetrics(Metrics):
    """Metrics that record nothing: the request counter, histogram and pool gauges cost zero."""

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        pass

    def sample_pool(self, stats: Callable[[], dict[str, int]], *, every: float = 1.0) -> None:
        pass


def create_app(*remove: str) -> Flask:
    """The service without the named layers, any combination of:

    "log" (the request line: LOG_LEVEL=warning), "metrics" (NullMetrics), "deadline" (no
    statement_timeout on the connections, so BEGIN never carries one either).
    """
    unknown = set(remove) - set(LAYERS)
    if unknown:
        raise ValueError(f"unknown layers {sorted(unknown)}; choose from {LAYERS}")
    config = load_config()
    if "log" in remove:
        config = dataclasses.replace(config, log_level="warning")  # the request line is INFO
    overrides: dict[str, Any] = {}
    if "metrics" in remove:
        overrides["metrics"] = NullMetrics()
    if "deadline" in remove:
        overrides["database"] = Database(
            config.database_url,
            min_size=config.db_pool_min,
            max_size=config.db_pool_max,
            timeout=config.db_pool_timeout,
            max_waiting=config.db_pool_max_waiting,
            statement_timeout=None,
        )
    return create_service(config, **overrides)
