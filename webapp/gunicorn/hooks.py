"""What gunicorn's hooks do, as plain functions tests can call (the draining worker is in worker.py).

A stop (SIGTERM or SIGINT to the master; docs/operations.md has the measurements):
  1. master: SIGTERM to the workers, which answer /readyz with 503 at once and keep serving for
     SHUTDOWN_DRAIN_SECONDS, so a load balancer still routing here has time to notice;
  2. master: the kernel stops starting new connections on the listening socket;
  3. master: gunicorn's own graceful stop (close its copy of the socket, wait graceful_timeout);
  4. each worker: finishes its request, answers every connection already waiting in the listen
     backlog, closes its pool, exits 0.
Stock gunicorn does 3 only: whatever sits in the backlog when the last worker exits is reset.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
import traceback
from typing import Any, NoReturn

from flask import has_request_context, request
from gunicorn.glogging import Logger

from webapp.gunicorn import metrics_files
from webapp.gunicorn.socket_filter import refuse_new_connections
from webapp.gunicorn.worker import app_parts
from webapp.observability.logs import current_request_id
from webapp.settings import ConfigError, load_config
from webapp.web.errors import error_response
from webapp.web.pipeline import record_request

log = logging.getLogger("webapp.lifecycle")

# A handshake the kernel answered just before step 2 completes within a round trip; let it.
_HANDSHAKE_SECONDS = 0.2
# An exiting worker's span flush: past the backlog's deadline by at most this (of the second left
# before the SIGKILL), and at most this long when no stop is under way.
_FLUSH_GRACE_SECONDS = 0.5
_UNHURRIED_FLUSH_SECONDS = 5.0


# --- master hooks ---------------------------------------------------------------------------


def on_starting(server: Any, *, drain_seconds: float) -> None:
    """Master, before the first fork: a valid config, an empty metrics folder, graceful SIGTERM and SIGINT."""
    check_config()
    wipe_metrics_dir(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    install_graceful_stop(server, drain_seconds)


def check_config() -> None:
    """Exit 1 with one log line naming every bad variable when the environment is invalid, before any fork.

    Without it every worker fails in create_app with a traceback, gunicorn respawns them, and
    finally exits 3 ("Worker failed to boot"): the one line that matters is hard to find.
    """
    try:
        load_config(os.environ)
    except ConfigError as exc:
        refuse_to_start(exc)


def refuse_to_start(exc: ConfigError) -> NoReturn:
    """Log the problems as one line (JSON unless LOG_FORMAT=console) and exit 1; nothing on stderr.

    Platforms merge stdout and stderr into one log stream, where a plain-text line would be
    the one line the log store cannot parse. The messages name variables, never their values.
    """
    log.error("invalid configuration; not starting", extra={"problems": exc.problems})
    raise SystemExit(1) from None


def wipe_metrics_dir(path: str | None) -> None:
    """Empty the Prometheus multiprocess folder: files of a previous run would be summed in."""
    if not path:
        return
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def install_graceful_stop(arbiter: Any, drain_seconds: float) -> None:
    """Make the master's SIGTERM and SIGINT both run stop_gracefully."""

    def stop() -> None:
        stop_gracefully(arbiter, drain_seconds)

    # The arbiter looks a signal's handler up by name each time (getattr(self, "handle_term")), so
    # instance attributes replace its methods. Trap: stock SIGINT is a *quick* stop (SIGQUIT to the
    # workers, cutting requests in flight), and Ctrl-C, systemd and Heroku all send SIGINT/SIGTERM.
    # The quick stop stays available: SIGQUIT, or a second SIGINT while stopping.
    arbiter.handle_term = stop
    arbiter.handle_int = stop


def stop_gracefully(arbiter: Any, drain_seconds: float) -> None:
    """Steps 1-3 of a stop (module docstring); raises StopIteration, as gunicorn's own handle_term does."""
    log.info("stopping", extra={"drain_seconds": drain_seconds})
    if drain_seconds > 0:
        arbiter.kill_workers(signal.SIGTERM)  # readiness → 503 now; workers serve on meanwhile
        time.sleep(drain_seconds)
    if owns_listeners(arbiter):
        refused = [refuse_new_connections(listener) for listener in arbiter.LISTENERS]
        if any(refused):
            time.sleep(_HANDSHAKE_SECONDS)  # handshakes already answered land in the queue, to be served
    raise StopIteration  # the run loop then calls halt(): close, SIGTERM, wait graceful_timeout


def owns_listeners(arbiter: Any) -> bool:
    """False when another process serves this socket after us (USR2 upgrade, systemd socket, reuse_port)."""
    # The same test gunicorn's stop() makes before unlinking a unix socket.
    return arbiter.reexec_pid == arbiter.master_pid == 0 and not arbiter.systemd and not arbiter.cfg.reuse_port


def when_ready(server: Any) -> None:
    log.info("gunicorn ready", extra={"workers": server.num_workers, "backlog": server.cfg.backlog})


def child_exit(server: Any, worker: Any) -> None:
    """Master, after a worker died: fold its metric files into the archive, drop its live gauges (pool sizes)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        try:
            metrics_files.archive_dead_worker(path, worker.pid)
        except OSError:
            # The master must outlive any file trouble; the worker's files stay and are still read.
            log.warning("could not archive a dead worker's metric files", exc_info=True,
                        extra={"worker_pid": worker.pid})


def on_exit(server: Any, *, remove_metrics_dir: str | None = None) -> None:
    """Master, last thing: say so, and remove a metrics folder that was ours alone."""
    if remove_metrics_dir:
        shutil.rmtree(remove_metrics_dir, ignore_errors=True)
    log.info("gunicorn stopped")


class GunicornLogger(Logger):
    """gunicorn's logger without its access log: the app writes the one JSON line per request.

    Trap: with logconfig_dict set, gunicorn formats an access line for every request and only
    then lets the logger's level drop it; overriding access() skips that work.
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


# --- worker hooks -----------------------------------------------------------------------------


def post_fork(worker: Any, *, drain_seconds: float, client_read_timeout: float = 0.0) -> None:
    """Worker, just forked: hand it the drain delay and read timeout (not gunicorn settings, so it cannot read them)."""
    worker.drain_seconds = drain_seconds
    worker.read_timeout = client_read_timeout


def post_worker_init(worker: Any) -> None:
    log.info("worker ready", extra={"worker_pid": worker.pid})


def worker_exit(server: Any, worker: Any) -> None:
    """Worker, exiting: close the pool so Postgres sees clean disconnects, not dropped sockets; flush its spans."""
    parts = app_parts(worker)
    if "database" in parts:
        parts["database"].close()
    if "health" in parts:
        parts["health"].close()
    spans_flushed = None
    tracing = parts.get("tracing")
    if tracing is not None:
        spans_flushed = tracing.shutdown(flush_seconds(worker, tracing.settings.export_timeout_ms / 1000))
    log.info("worker stopped", extra={
        "worker_pid": worker.pid, "pool_closed": "database" in parts, "spans_flushed": spans_flushed,
    })


def flush_seconds(worker: Any, export_timeout: float) -> float:
    """How long an exiting worker waits for its spans to reach the collector: one export, within the stop window.

    A draining worker leaves its backlog a second before the master's SIGKILL (worker.py,
    stop_deadline); a collector that never answers must not turn a clean exit into a kill.
    """
    if not getattr(worker, "stopping", False):  # max_requests, or the master gone: no SIGKILL is coming
        return min(export_timeout, _UNHURRIED_FLUSH_SECONDS)
    return max(0.0, min(export_timeout, worker.stop_deadline + _FLUSH_GRACE_SECONDS - time.monotonic()))


def worker_abort(worker: Any) -> None:
    """Worker, inside SIGABRT (gunicorn's timeout): answer the stuck request with our JSON 504, and log it."""
    client = getattr(worker, "current_client", None)
    if client is None or not has_request_context() or worker.cfg.is_ssl:
        # Between requests, reading a slow client's headers, or writing a response: nothing to answer.
        log.error("worker timeout outside a request", extra={"worker_pid": worker.pid})
        return
    stuck_at = "".join(traceback.format_stack(getattr(worker, "abort_frame", None), limit=12))  # innermost
    log.error("worker timeout", extra={"timeout_s": worker.cfg.timeout, "stack": stuck_at})
    # The same request line and metrics as every other request, even for a stuck probe.
    parts = app_parts(worker)
    record_request(request, 504, float(worker.cfg.timeout), parts.get("metrics"), logging.getLogger("webapp.http"),
                   quiet_probes=False)
    try:
        client.sendall(_timeout_response(worker.cfg.timeout))
        worker.answered_client = client
    except OSError:
        log.debug("could not send the timeout response", exc_info=True)


def _timeout_response(timeout: int) -> bytes:
    """Our error shape as raw HTTP/1.1 bytes: the worker is about to exit, so no WSGI server will send it."""
    response = error_response(
        504, "worker_timeout",
        f"the request ran longer than the server's {timeout} s limit and was stopped; quote the request id",
    )
    response.headers["X-Request-ID"] = current_request_id() or ""
    response.headers["Connection"] = "close"
    head = "".join(f"{name}: {value}\r\n" for name, value in response.headers.items())
    return f"HTTP/1.1 {response.status}\r\n{head}\r\n".encode("latin-1") + response.get_data()
