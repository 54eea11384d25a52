"""Gunicorn settings from the environment, and thin hooks that call webapp.lifecycle.

docs/operations.md explains each choice; `gunicorn 'webapp:create_app()'` reads this file by itself.
"""

import os
import tempfile

# Trap: every request writes two files: the metrics (mmapped by prometheus_client) and gunicorn's
# worker heartbeat (touched by the worker before each accept). On a disk-backed /tmp (ext4 here,
# overlayfs in many containers) those writes cost the kernel journal and writeback work, and a slow
# disk can stall the heartbeat (gunicorn's docs advise tmpfs for it). tmpfs keeps both in memory.
_scratch_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
worker_tmp_dir = _scratch_dir

# Trap: prometheus_client picks single- or multi-process storage when it is first imported,
# from this variable, so it is set here, in the master, before anything imports it. The default
# is a folder of this master's own: wiped at start, removed at exit.
_own_metrics_dir = os.path.join(_scratch_dir, f"webapp-metrics-{os.getpid()}")
_metrics_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", _own_metrics_dir)

# Only now may anything import prometheus_client (webapp does).
from webapp import lifecycle  # noqa: E402
from webapp.observability import gunicorn_logconfig  # noqa: E402

# All interfaces, as a platform's router needs; BIND_HOST=127.0.0.1 keeps a laptop's server private.
bind = [f"{os.environ.get('BIND_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"]
# Sync workers wait on Postgres, so more workers than cores; sched_getaffinity sees a container's CPU limit.
workers = int(os.environ.get("WEB_CONCURRENCY", 2 * len(os.sched_getaffinity(0)) + 1))
worker_class = "webapp.workers.DrainingSyncWorker"
preload_app = False  # each worker imports and builds its own app (and pool) after fork
# A request may run `timeout` s (above REQUEST_TIMEOUT, so the app's own 504 comes first); a stop
# drains, then waits `graceful_timeout` for requests; all of it inside the platform's 30 s.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "15"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
_drain_seconds = float(os.environ.get("SHUTDOWN_DRAIN_SECONDS", "1"))
# A request's headers and body must all arrive this many seconds after accept, or the client gets
# a 408 (nginx's client_header_timeout/client_body_timeout): a slow client holds a sync worker.
# Default 5 s, or half the worker timeout if that is shorter: the read must end before gunicorn's kill.
_client_read_timeout = float(os.environ.get("CLIENT_READ_TIMEOUT", min(5.0, timeout / 2)))
lifecycle.check_stop_window(timeout=timeout, graceful_timeout=graceful_timeout, drain_seconds=_drain_seconds,
                            client_read_timeout=_client_read_timeout)
# Bounded: past it the kernel drops new SYNs (clients retry) instead of queueing work we cannot reach.
backlog = int(os.environ.get("GUNICORN_BACKLOG", "256"))
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
# gunicorn 27 opens a control socket at a per-user path by default: two instances on one host
# would share it, and it runs a thread in the master that every later fork inherits. This
# service is driven by signals (and platform restarts) only, so it is off.
control_socket_disable = True
# One JSON object per line on stdout, for gunicorn's lines and the app's alike.
loglevel = os.environ.get("LOG_LEVEL", "info")
logconfig_dict = gunicorn_logconfig(loglevel)
logger_class = "webapp.lifecycle.GunicornLogger"
accesslog = None  # the app logs one line per request, with the route template and request id


def on_starting(server):
    lifecycle.on_starting(server, drain_seconds=_drain_seconds)


def when_ready(server):
    lifecycle.when_ready(server)


def post_fork(server, worker):
    lifecycle.post_fork(worker, drain_seconds=_drain_seconds, client_read_timeout=_client_read_timeout)


def post_worker_init(worker):
    lifecycle.post_worker_init(worker)


def worker_abort(worker):
    lifecycle.worker_abort(worker)


def worker_exit(server, worker):
    lifecycle.worker_exit(server, worker)


def child_exit(server, worker):
    lifecycle.child_exit(server, worker)


def on_exit(server):
    lifecycle.on_exit(server, remove_metrics_dir=_own_metrics_dir if _metrics_dir == _own_metrics_dir else None)
