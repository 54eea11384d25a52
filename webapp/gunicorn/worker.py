"""The draining sync worker: a stop answers every connection the kernel queued for it.

The stop itself is described in hooks.py (and the socket filter that keeps the queue from
growing in socket_filter.py). The worker also reads each request whole within
CLIENT_READ_TIMEOUT and answers what it rejects in JSON (wire.py).
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import time
from typing import Any

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from webapp.gunicorn import wire
from webapp.web.pipeline import request_id_factory

log = logging.getLogger("webapp.lifecycle")

# A draining worker stops this long after the drain delay, so after the master's filter is on.
WORKER_LAG_SECONDS = 0.5
# After answering a request it rejected, a worker waits at most this long for the client to
# close (gunicorn's own linger is 2 s): closing on unread bytes resets the connection, which
# can destroy the answer, but a slow client must not hold the worker much longer either.
REJECT_LINGER_SECONDS = 1.0
# A chunked body's limit when the app does not say (Flask's MAX_CONTENT_LENGTH): MAX_BODY_BYTES' ceiling.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


def app_parts(worker: Any) -> dict[str, Any]:
    """The objects create_app keeps in app.extensions["webapp"], for a worker's hooks."""
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("webapp", {}) if app is not None else {}


class DrainingSyncWorker(SyncWorker):
    """gunicorn's sync worker, plus a stop that answers every connection the kernel accepted.

    SIGTERM or SIGINT: /readyz answers 503 at once; serve on for drain_seconds; then answer what is
    still queued in the listen backlog before exiting. SIGABRT (timeout): see worker_abort.
    """

    drain_seconds = 0.0  # set by post_fork
    read_timeout = 0.0  # CLIENT_READ_TIMEOUT, set by post_fork; 0 leaves reads to gunicorn's timeout
    stopping = False
    stop_deadline = 0.0
    current_client: socket.socket | None = None
    answered_client: socket.socket | None = None
    abort_frame: Any = None
    accepted_at = 0.0

    def init_process(self) -> None:
        # After the fork: ids with a random prefix of this worker's own, as the app's (web/pipeline.py).
        self.new_request_id = request_id_factory()
        super().init_process()

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
        health = app_parts(self).get("health")
        if health is not None:
            health.mark_stopping()
        if self.drain_seconds > 0:
            signal.setitimer(signal.ITIMER_REAL, self.drain_seconds + WORKER_LAG_SECONDS)
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
        self.accepted_at = time.monotonic()
        if self.read_timeout > 0 and not self.cfg.is_ssl:
            # With TLS gunicorn wraps the socket itself; this service leaves TLS to its proxy.
            client = wire.with_read_deadline(client, self.read_timeout)
        self.current_client = client  # worker_abort answers it if the request outlives the timeout
        try:
            super().handle(listener, client, addr)
        finally:
            self.current_client = None

    def handle_request(self, listener: Any, req: Any, client: Any, addr: Any) -> None:
        try:
            wire.buffer_body(req, client, self.max_body_bytes())
        finally:
            wire.end_read_deadline(client)
        super().handle_request(listener, req, client, addr)

    def max_body_bytes(self) -> int:
        config = getattr(self.wsgi, "config", None)  # a Flask app's, read when needed: it is built after fork
        limit = config.get("MAX_CONTENT_LENGTH") if config is not None else None
        return int(limit) if limit else DEFAULT_MAX_BODY_BYTES

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer what gunicorn or wire.py rejected in the service's JSON error shape, never HTML."""
        wire.end_read_deadline(client)
        if isinstance(exc, SystemExit):
            # gunicorn's timeout (SIGABRT) or a quick stop (SIGQUIT) inside a request. gunicorn's
            # handle() would catch it here, answer HTML, linger up to 2 s for the client to close,
            # and carry on serving, while the master SIGKILLs the worker ("Perhaps out of memory?").
            # Exit now instead, with whatever answer worker_abort managed to send.
            if client is not self.answered_client:
                self.send_error(client, 503, "service_unavailable", "the server stopped before answering; retry",
                                wire.request_id(req, self.new_request_id))
            client.close()
            raise exc
        if client is self.answered_client:
            return  # worker_abort already answered in JSON; gunicorn's HTML page must not follow
        answer = wire.answer_for(exc)
        rid = wire.request_id(req, self.new_request_id)
        status, code, message = answer or (500, "internal_error", "internal error; quote the request id")
        # One line: the exception's class and our message, never str(exc): gunicorn quotes the raw
        # line it rejected, and a header line without a colon may be "Authorization Bearer <token>".
        # WARNING for whatever the client sent (a 501 for a transfer coding included), ERROR only
        # for a bug of ours, with its traceback: any client can write WARNING lines, none ERROR ones.
        ours = answer is None or status == 500
        self.log.log(logging.ERROR if ours else logging.WARNING, "rejected request: %s", message, extra={
            "status": status, "code": code, "error": type(exc).__name__, "request_id": rid,
            "remote_addr": addr[0] if addr else None,
            "duration_ms": round((time.monotonic() - self.accepted_at) * 1000, 2),
        }, exc_info=exc if answer is None else None)
        metrics = app_parts(self).get("metrics")
        if metrics is not None:
            method = getattr(req, "method", None) or "other"
            metrics.observe_request(method, "<rejected>", status, time.monotonic() - self.accepted_at)
        self.send_error(client, status, code, message, rid)
        util.close_graceful(client, timeout=REJECT_LINGER_SECONDS)  # gunicorn's own close after it: a no-op

    def send_error(self, client: Any, status: int, code: str, message: str, request_id: str) -> None:
        try:
            client.setblocking(False)  # as gunicorn's own error page: a client that reads nothing cannot block us
            client.send(wire.error_bytes(status, code, message, request_id))
        except OSError:
            log.debug("could not send the error response", exc_info=True)
