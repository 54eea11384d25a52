"""Gunicorn settings from the environment, and thin lifecycle hooks that call webapp.lifecycle."""

import multiprocessing
import os
import tempfile

# Trap: prometheus_client decides single- vs multi-process mode at import time from this
# variable, so it must be set here, in the master, before anything imports prometheus_client.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"webapp-metrics-{os.getpid()}"))

from webapp import lifecycle  # noqa: E402  (after the environment above is set)

bind = [f"{os.environ.get('BIND_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"]
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
worker_class = "webapp.lifecycle.DrainingSyncWorker"
# Heroku-style platforms kill the process 30 s after SIGTERM: drain + graceful stop fit inside.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = 2
backlog = int(os.environ.get("GUNICORN_BACKLOG", "256"))  # bounded: excess load is refused, not queued forever
preload_app = False  # each worker builds its own app (and pool) after fork
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
# gunicorn 27 opens a control socket under $HOME by default; two instances on one host would
# share its path. This service is managed by signals only, so it is off.
control_socket_disable = True
logconfig_dict = lifecycle.gunicorn_logconfig(os.environ.get("LOG_LEVEL", "info"))
accesslog = None  # the app logs one JSON line per request; gunicorn's access log would duplicate it


def on_starting(server):
    lifecycle.on_starting(server)


def when_ready(server):
    lifecycle.when_ready(server)


def post_worker_init(worker):
    lifecycle.post_worker_init(worker)


def worker_exit(server, worker):
    lifecycle.worker_exit(server, worker)


def child_exit(server, worker):
    lifecycle.child_exit(server, worker)


def worker_abort(worker):
    lifecycle.worker_abort(worker)


def on_exit(server):
    lifecycle.on_exit(server)
