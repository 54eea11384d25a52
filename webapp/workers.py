"""The draining sync worker, and the socket filter that lets a stop lose no queued connection.

The stop itself is described in lifecycle.py; this module holds the two pieces that touch the
kernel: a BPF filter on the listening socket, and a worker that answers its listen backlog.
The worker also reads each request whole within CLIENT_READ_TIMEOUT and answers what it
rejects in JSON (wire.py).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import signal
import socket
import sys
import time
from typing import Any

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from webapp import wire

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
                                wire.request_id(req))
            client.close()
            raise exc
        if client is self.answered_client:
            return  # worker_abort already answered in JSON; gunicorn's HTML page must not follow
        answer = wire.answer_for(exc)
        rid = wire.request_id(req)
        status, code, message = answer or (500, "internal_error", "internal error; quote the request id")
        # One line, on gunicorn's logger so that its query-string redaction applies to the request
        # line quoted in str(exc): a WARNING for the client's mistake (or slowness), an ERROR for ours.
        self.log.log(logging.WARNING if status < 500 else logging.ERROR, "rejected request: %s", exc, extra={
            "status": status, "code": code, "request_id": rid, "remote_addr": addr[0] if addr else None,
            "duration_ms": round((time.monotonic() - self.accepted_at) * 1000, 2),
        }, exc_info=exc if answer is None else None)  # a bug of ours: with its traceback
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
