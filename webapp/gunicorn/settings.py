"""gunicorn's settings and hooks for webapp: `gunicorn -c python:webapp.gunicorn.settings 'webapp:create_app()'`.

The one place they live: the checkout's gunicorn.conf.py imports them, `webapp serve` and the
Procfile name this module, and the wheel carries it. Importing it sets up gunicorn's master (the
environment, logging, the configuration check), so only gunicorn imports it; the pure parts are
in server_settings.py. docs/operations.md explains each choice.
"""

import os
import tempfile

from webapp.settings import GUNICORN_SETTINGS_MARKER, LOG_FORMATS, ConfigError, with_dotenv

# The one .env rule (webapp/settings.py, with_dotenv): the master reads it, its workers inherit it.
os.environ.update(with_dotenv(os.environ))
# Lets the app tell a gunicorn without these settings, which it warns about (webapp/app.py).
os.environ[GUNICORN_SETTINGS_MARKER] = __name__

# Trap: every request writes two files: the metrics (mmapped by prometheus_client) and gunicorn's
# worker heartbeat (touched by the worker before each accept). On a disk-backed /tmp (overlayfs
# in many containers) those writes cost journal and writeback work, and a slow disk can stall
# the heartbeat (gunicorn's docs advise tmpfs for it). tmpfs keeps both in memory.
_scratch_dir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
worker_tmp_dir = _scratch_dir

# Workers share metrics through files in this folder. The default is a folder of this master's
# own: wiped at start, removed at exit.
_own_metrics_dir = os.path.join(_scratch_dir, f"webapp-metrics-{os.getpid()}")
_metrics_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", _own_metrics_dir)

# Trap: prometheus_client picks single- or multi-process storage once, when it is first imported,
# from PROMETHEUS_MULTIPROC_DIR. Nothing above imports it (importing the webapp package imports
# nothing); the modules below do, so they come after the variable is set.
from webapp.gunicorn import hooks  # noqa: E402
from webapp.gunicorn.server_settings import load_server_settings, usable_cpus  # noqa: E402
from webapp.observability.logs import configure_logging, gunicorn_logconfig  # noqa: E402

# gunicorn sets up its logging (logconfig_dict, below) only after reading this module: until then
# ours, so a refusal or a warning here is one JSON line too, not plain text or a traceback.
_log_format = os.environ.get("LOG_FORMAT", "json")
configure_logging("info", log_format=_log_format if _log_format in LOG_FORMATS else "json")
try:
    _settings = load_server_settings(os.environ, cpus=usable_cpus())
except ConfigError as exc:
    hooks.refuse_to_start(exc)  # one line naming each bad variable; exit 1

bind = [f"{_settings.bind_host}:{_settings.port}"]
workers = _settings.workers
worker_class = "webapp.gunicorn.worker.DrainingSyncWorker"
preload_app = False  # each worker imports and builds its own app (and pool) after fork
# A request may run `timeout` s (above REQUEST_TIMEOUT, so the app's own 504 comes first); a stop
# drains, then waits `graceful_timeout` for requests; all of it inside the platform's stop window.
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
backlog = _settings.backlog
max_requests = _settings.max_requests
max_requests_jitter = max_requests // 10
# gunicorn 27 opens a control socket at a per-user path by default: two instances on one host
# would share it, and it runs a thread in the master that every later fork inherits. This
# service is driven by signals (and platform restarts) only, so it is off.
control_socket_disable = True
# One JSON object per line on stdout (LOG_FORMAT=console: readable lines), gunicorn's and the app's.
loglevel = _settings.log_level
logconfig_dict = gunicorn_logconfig(_settings.log_level, _settings.log_format)
logger_class = "webapp.gunicorn.hooks.GunicornLogger"
accesslog = None  # the app logs one line per request, with the route template and request id


def on_starting(server):
    hooks.on_starting(server, drain_seconds=_settings.drain_seconds)


def when_ready(server):
    hooks.when_ready(server)


def post_fork(server, worker):
    hooks.post_fork(
        worker, drain_seconds=_settings.drain_seconds, client_read_timeout=_settings.client_read_timeout
    )


def post_worker_init(worker):
    hooks.post_worker_init(worker)


def worker_abort(worker):
    hooks.worker_abort(worker)


def worker_exit(server, worker):
    hooks.worker_exit(server, worker)


def child_exit(server, worker):
    hooks.child_exit(server, worker)


def on_exit(server):
    hooks.on_exit(server, remove_metrics_dir=_own_metrics_dir if _metrics_dir == _own_metrics_dir else None)
