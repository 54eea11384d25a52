"""What gunicorn's hooks do, as plain functions (tests call them without gunicorn)."""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from gunicorn.workers.sync import SyncWorker

log = logging.getLogger("webapp.lifecycle")


def gunicorn_logconfig(level: str) -> dict[str, Any]:
    """logging.config dict that sends gunicorn's own error log through our JSON formatter."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "webapp.observability.json_formatter"}},
        "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stdout"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": ["stdout"], "propagate": False},
        },
        "root": {"level": level.upper(), "handlers": []},
    }


def wipe_metrics_dir(path: str | None) -> None:
    """Empty the Prometheus multiprocess folder: files of a previous run would be summed in."""
    if not path:
        return
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def on_starting(server: Any) -> None:
    wipe_metrics_dir(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def when_ready(server: Any) -> None:
    log.info("gunicorn ready", extra={"pid": os.getpid()})


def post_worker_init(worker: Any) -> None:
    log.info("worker ready", extra={"worker_pid": worker.pid})


def _app_parts(worker: Any) -> dict[str, Any]:
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("webapp", {}) if app is not None else {}


def worker_exit(server: Any, worker: Any) -> None:
    """Close this worker's pool so Postgres sees clean disconnects, not dropped sockets."""
    parts = _app_parts(worker)
    if "database" in parts:
        parts["database"].close()
    if "health" in parts:
        parts["health"].close()
    log.info("worker stopped", extra={"worker_pid": worker.pid})


def child_exit(server: Any, worker: Any) -> None:
    """Tell prometheus_client a worker is gone, so its live gauges stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def worker_abort(worker: Any) -> None:
    log.error("worker timed out", extra={"worker_pid": worker.pid})


def on_exit(server: Any) -> None:
    log.info("gunicorn stopped")


class DrainingSyncWorker(SyncWorker):
    """gunicorn's sync worker, plus: readiness turns 503 as soon as SIGTERM arrives."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        health = _app_parts(self).get("health")
        if health is not None:
            health.mark_stopping()
        super().handle_exit(sig, frame)
