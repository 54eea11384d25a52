"""What gunicorn's hooks do, as plain functions tests can call, and the worker class that drains.

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

import ctypes
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from typing import Any

from flask import g, has_request_context, request
from gunicorn.glogging import Logger
from gunicorn.workers.sync import SyncWorker

from webapp.http import error_response
from webapp.observability import log_request

log = logging.getLogger("webapp.lifecycle")

# Heroku SIGKILLs 30 s after SIGTERM; so does Kubernetes by default (terminationGracePeriodSeconds).
STOP_WINDOW_SECONDS = 30.0
# A handshake the kernel answered just before step 2 completes within a round trip; let it.
_HANDSHAKE_SECONDS = 0.2
# A draining worker stops this long after the drain delay, so after the master's step 2.
_WORKER_LAG_SECONDS = 0.5


def check_stop_window(*, timeout: int, graceful_timeout: int, drain_seconds: float,
                      window: float = STOP_WINDOW_SECONDS) -> None:
    """Raise ValueError unless every request can end, and the whole stop fit, before the platform's SIGKILL."""
    problems = []
    if timeout < 1:
        problems.append("GUNICORN_TIMEOUT must be at least 1 s (0 would let a stuck worker hang forever)")
    if timeout > graceful_timeout:
        # Else a request still running at SIGTERM is SIGKILLed mid-way: no answer, not even our 504.
        problems.append("GUNICORN_TIMEOUT must not exceed GUNICORN_GRACEFUL_TIMEOUT")
    if not 0 <= drain_seconds <= 10:
        problems.append("SHUTDOWN_DRAIN_SECONDS must be between 0 and 10")
    if drain_seconds + _WORKER_LAG_SECONDS + graceful_timeout > window - 1:
        problems.append(f"SHUTDOWN_DRAIN_SECONDS + GUNICORN_GRACEFUL_TIMEOUT must stay under the {window:g} s stop window")
    if problems:
        raise ValueError("; ".join(problems))


# --- master hooks ---------------------------------------------------------------------------


def on_starting(server: Any, *, drain_seconds: float) -> None:
    """Master, before the first fork: an empty metrics folder; SIGTERM and SIGINT both stop gracefully."""
    wipe_metrics_dir(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    install_graceful_stop(server, drain_seconds)


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


class _SockFilter(ctypes.Structure):  # struct sock_filter: one classic BPF instruction
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):  # struct sock_fprog: the program SO_ATTACH_FILTER takes
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


_SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; Python's socket module does not export it
# Classic BPF, run on each packet reaching the socket with offset 0 at the TCP header:
# "drop it if it is a pure SYN (SYN set, ACK clear), keep everything else".
_DROP_NEW_SYNS = (
    _SockFilter(0x30, 0, 0, 13),  # ldb [13]           the TCP flags byte
    _SockFilter(0x54, 0, 0, 0x12),  # and #0x12        keep only SYN and ACK
    _SockFilter(0x15, 0, 1, 0x02),  # jeq #0x02        SYN without ACK?
    _SockFilter(0x06, 0, 0, 0),  # ret #0              yes: drop
    _SockFilter(0x06, 0, 0, 0xFFFFFFFF),  # ret #-1    no: keep the whole packet
)


def refuse_new_connections(listener: Any) -> bool:
    """Stop the kernel starting new TCP connections on listener; those already queued stay acceptable.

    Trap: the kernel completes handshakes by itself and queues them (the listen backlog) until a
    worker calls accept(); when the last process closes the socket, every queued connection is
    reset, though its client may already have sent a request. No call means "stop listening but
    keep the queue", so a BPF filter on the *listening* socket drops new SYNs: those clients get
    no answer, retry, and get "connection refused" once we are gone, which is safe to retry.
    Only pure SYNs: the last ACK of a handshake already under way must pass, or its client
    (connected, as far as it knows) would be reset instead. Queued connections are untouched.
    Linux only; elsewhere (or for a unix socket) returns False and the stop is gunicorn's own.
    """
    if not sys.platform.startswith("linux") or listener.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    program = (_SockFilter * len(_DROP_NEW_SYNS))(*_DROP_NEW_SYNS)
    try:
        listener.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(_SockFprog(len(_DROP_NEW_SYNS), program)))
    except OSError as exc:
        log.warning("could not refuse new connections; the backlog may be reset", extra={"error": str(exc)})
        return False
    return True


def when_ready(server: Any) -> None:
    log.info("gunicorn ready", extra={"workers": server.num_workers, "backlog": server.cfg.backlog})


def child_exit(server: Any, worker: Any) -> None:
    """Master, after a worker died: drop its live gauges (pool sizes) from the multiprocess sums."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)


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


def post_fork(worker: Any, *, drain_seconds: float) -> None:
    """Worker, just forked: hand it the drain delay (not a gunicorn setting, so it cannot read one)."""
    worker.drain_seconds = drain_seconds


def post_worker_init(worker: Any) -> None:
    log.info("worker ready", extra={"worker_pid": worker.pid})


def _app_parts(worker: Any) -> dict[str, Any]:
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("webapp", {}) if app is not None else {}


def worker_exit(server: Any, worker: Any) -> None:
    """Worker, exiting: close the pool so Postgres sees clean disconnects, not dropped sockets."""
    parts = _app_parts(worker)
    if "database" in parts:
        parts["database"].close()
    if "health" in parts:
        parts["health"].close()
    log.info("worker stopped", extra={"worker_pid": worker.pid, "pool_closed": "database" in parts})


def worker_abort(worker: Any) -> None:
    """Worker, inside SIGABRT (gunicorn's timeout): answer the stuck request with our JSON 504, and log it."""
    client = getattr(worker, "current_client", None)
    if client is None or not has_request_context() or worker.cfg.is_ssl:
        # Between requests, reading a slow client's headers, or writing a response: nothing to answer.
        log.error("worker timeout outside a request", extra={"worker_pid": worker.pid})
        return
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    path = request.url_rule.rule if request.url_rule else "<unmatched>"
    stuck_at = "".join(traceback.format_stack(getattr(worker, "abort_frame", None), limit=12))  # innermost
    log.error("worker timeout", extra={"timeout_s": worker.cfg.timeout, "stack": stuck_at})
    log_request(logging.getLogger("webapp.http"), {  # the same request line as every other request
        "method": request.method, "path": path, "raw_path": request.path, "status": 504,
        "duration_ms": round(seconds * 1000, 2), "request_id": g.get("request_id"), "remote_addr": request.remote_addr,
    }, quiet=False)
    metrics = _app_parts(worker).get("metrics")
    if metrics is not None:
        metrics.observe_request(request.method, path, 504, seconds)
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
    response.headers["X-Request-ID"] = g.get("request_id", "")
    response.headers["Connection"] = "close"
    head = "".join(f"{name}: {value}\r\n" for name, value in response.headers.items())
    return f"HTTP/1.1 {response.status}\r\n{head}\r\n".encode("latin-1") + response.get_data()


class DrainingSyncWorker(SyncWorker):
    """gunicorn's sync worker, plus a stop that answers every connection the kernel accepted.

    SIGTERM or SIGINT: /readyz answers 503 at once; serve on for drain_seconds; then answer what is
    still queued in the listen backlog before exiting. SIGABRT (timeout): see worker_abort.
    """

    drain_seconds = 0.0  # set by post_fork
    stopping = False
    stop_deadline = 0.0
    current_client: socket.socket | None = None
    answered_client: socket.socket | None = None
    abort_frame: Any = None

    def init_signals(self) -> None:
        super().init_signals()
        # Stock workers treat SIGINT as SIGQUIT (exit now). Ctrl-C reaches every process of the
        # terminal's process group, workers included, so SIGINT must stop gracefully here too.
        signal.signal(signal.SIGINT, self.handle_exit)
        signal.signal(signal.SIGALRM, self.handle_drain_over)
        # As gunicorn does for SIGTERM: a signal must not interrupt a request's system calls.
        signal.siginterrupt(signal.SIGINT, False)
        signal.siginterrupt(signal.SIGALRM, False)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.stopping:
            return  # Heroku and the master may both send SIGTERM; the first one starts the clock
        self.stopping = True
        # Leave the backlog before the master's SIGKILL (its graceful_timeout starts after the drain).
        self.stop_deadline = time.monotonic() + self.drain_seconds + self.cfg.graceful_timeout - 1
        health = _app_parts(self).get("health")
        if health is not None:
            health.mark_stopping()
        if self.drain_seconds > 0:
            signal.setitimer(signal.ITIMER_REAL, self.drain_seconds + _WORKER_LAG_SECONDS)
        else:
            self.alive = False

    def handle_drain_over(self, sig: int, frame: Any) -> None:
        self.alive = False

    def handle_abort(self, sig: int, frame: Any) -> None:
        self.abort_frame = frame  # where the request was stuck, for worker_abort's log line
        super().handle_abort(sig, frame)

    def run(self) -> None:
        try:
            super().run()  # returns once alive is False: a stop, max_requests, or the master gone
            if self.stopping:
                served = self.serve_backlog()
                log.info("worker drained the backlog", extra={"worker_pid": self.pid, "served": served})
        finally:
            # Also on a quick stop (SIGQUIT mid-drain): a drain timer still armed when Python
            # resets its signal handlers at exit would kill the process with SIGALRM.
            signal.setitimer(signal.ITIMER_REAL, 0)

    def serve_backlog(self) -> int:
        """Answer connections already queued in the listen backlog until none is left; return how many."""
        # Bounded by count (all a queue can hold) and time: during a reload the queue is shared
        # with the new workers and never runs dry under load, yet leaving it there loses nothing.
        served = 0
        for listener in self.sockets:
            while served < self.cfg.backlog and time.monotonic() < self.stop_deadline:
                try:
                    self.accept(listener)  # non-blocking socket: raises at once when the queue is empty
                except OSError as exc:
                    if exc.errno == errno.ECONNABORTED:
                        continue  # the client gave up while queued
                    break  # EAGAIN: empty (anything else: the socket is gone)
                served += 1
                self.notify()
        return served

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        self.current_client = client  # worker_abort answers it if the request outlives the timeout
        try:
            super().handle(listener, client, addr)
        finally:
            self.current_client = None

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if client is self.answered_client:
            return  # worker_abort already answered in JSON; gunicorn's HTML page must not follow
        super().handle_error(req, client, addr, exc)
