"""The request pipeline: what wraps every request, written down once, in the order it runs.

    request id → [trace] → log line + metrics → errors to HTTP → deadline → view

(trace: only with tracing on; off, the step is not in the list and costs nothing.)

create_app lists the steps (`app.use(...)`), like ardanlabs' `web.NewApp(mid.Logger, mid.Errors,
...)`. Each step is a Middleware: it gets the next handler and returns a handler that wraps it,
so the order is the list's order and nothing depends on Flask's hook registration order. A
handler is given the request, as a Go handler is, instead of looking it up through Flask's proxy.
Transactions are not a step: each service method opens its own (`with uow.begin() as tx`).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

from flask import Flask, Request, Response, request

from webapp.domain.errors import QueuedTooLong
from webapp.observability.logs import REQUEST_ID, current_request_id
from webapp.observability.metrics import Metrics
from webapp.resilience import Deadline

if TYPE_CHECKING:  # imported by create_app only when tracing is on: the [tracing] extra may be absent
    from webapp.observability.tracing import Tracing

# Like a Go handler, each one is given the request: no step looks it up through Flask's proxy.
Handler = Callable[[Request], Response]
Middleware = Callable[[Handler], Handler]

REQUEST_ID_HEADER = "X-Request-ID"
# A client may ask for a shorter budget than REQUEST_TIMEOUT (never a longer one).
TIMEOUT_HEADER = "X-Request-Timeout"
# When the proxy received the request (deploy/nginx.conf: `t=<seconds.ms>`; Heroku: `<ms>`).
REQUEST_START_HEADER = "X-Request-Start"
# Where the deadline step leaves the request's queue time (seconds) for the log line and metrics.
QUEUE_SECONDS_KEY = "webapp.queue_seconds"
# An X-Request-Start older than this is a broken clock or a forgery, not a queue: ignored.
MAX_QUEUE_SECONDS = 86400.0
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Probes run every few seconds; their lines go to DEBUG so they do not drown the rest.
QUIET_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})

# The request in flight's deadline, set by its step and reset when the request ends. A ContextVar,
# as Flask keeps its own request (and observability.logs the request id): each request (each
# thread) sees only its own, typed, without Flask's `g` (a context lookup on every access).
_deadline: ContextVar[Deadline | None] = ContextVar("webapp.deadline", default=None)


class PipelineFlask(Flask):
    """Flask whose every request runs through the middleware given to use(), outermost first.

    full_dispatch_request is Flask's public, documented "dispatch with pre- and post-processing
    and error handling" step; the innermost handler is Flask's own. TRAP_HTTP_EXCEPTIONS lets
    404/405/413 reach the errors step as exceptions instead of becoming HTML pages inside Flask.
    """

    _pipeline: Handler | None = None

    def use(self, *middleware: Middleware) -> None:
        """Run each request through middleware[0](middleware[1](...(Flask's dispatch)))."""
        self.config["TRAP_HTTP_EXCEPTIONS"] = True
        flask_dispatch = super().full_dispatch_request

        def flasks_own(_req: Request) -> Response:  # innermost: hooks, the view, the response
            return flask_dispatch()

        handler: Handler = flasks_own
        for step in reversed(middleware):
            handler = step(handler)
        self._pipeline = handler

    def full_dispatch_request(self) -> Response:
        if self._pipeline is None:
            raise RuntimeError("PipelineFlask.use() was never called")
        # One lookup through Flask's proxy for the request object itself, handed to every step.
        return self._pipeline(request._get_current_object())  # type: ignore[attr-defined]


def request_id() -> Middleware:
    """current_request_id(): the caller's X-Request-ID when sane, else a new one; echoed on the response."""
    new_id = request_id_factory()

    def step(next_handler: Handler) -> Handler:
        def handler(req: Request) -> Response:
            rid = request_id_for(req.headers.get(REQUEST_ID_HEADER), new_id)
            token = REQUEST_ID.set(rid)
            try:
                response = next_handler(req)
            finally:
                REQUEST_ID.reset(token)  # else it would stamp the worker's later lines
            response.headers[REQUEST_ID_HEADER] = rid
            return response

        return handler

    return step


def trace(tracing: Tracing) -> Middleware:
    """W3C trace context in (traceparent, tracestate) and out (traceresponse): one server span per request.

    Outside the log step, so the request line carries the trace id; outside the errors step, so
    the span holds the status the client got. Why not opentelemetry-instrumentation-flask: its
    span lives in Flask's before/teardown hooks, inside the innermost step, so neither would hold.
    """

    def step(next_handler: Handler) -> Handler:
        def handler(req: Request) -> Response:
            return tracing.serve(req, next_handler)

        return handler

    return step


def deadline(request_timeout: float) -> Middleware:
    """current_deadline(): the request's time budget, which every database wait inside it honours.

    With X-Request-Start the budget began when the proxy received the request: the time queued
    is spent. A request whose budget ran out while queued raises QueuedTooLong (503) before any
    work; this step runs inside the errors step so that the one error builder answers it.
    """

    def step(next_handler: Handler) -> Handler:
        def handler(req: Request) -> Response:
            headers = req.headers
            allowed = budget(headers.get(TIMEOUT_HEADER), request_timeout)
            started = headers.get(REQUEST_START_HEADER)
            queued = queue_seconds(started, time.time()) if started else None
            if queued is not None:
                req.environ[QUEUE_SECONDS_KEY] = queued  # the log step, outside this one, reads it
                # Probes are answered however long they queued: a queue must not make a live
                # instance look dead or unready, which would move its load onto the others.
                if queued >= allowed and req.path not in QUIET_PATHS:
                    raise QueuedTooLong(
                        f"the request waited {queued:.1f} s for a worker, past its {allowed:g} s budget; retry"
                    )
                allowed = max(0.0, allowed - queued)
            token = _deadline.set(Deadline(allowed))
            try:
                return next_handler(req)
            finally:
                _deadline.reset(token)

        return handler

    return step


def log_and_measure(metrics: Metrics, logger: logging.Logger) -> Middleware:
    """One log line and one metrics sample per request, with the status the client gets."""

    def step(next_handler: Handler) -> Handler:
        def handler(req: Request) -> Response:
            started = time.perf_counter()
            response = next_handler(req)
            record_request(req, response.status_code, time.perf_counter() - started, metrics, logger)
            return response

        return handler

    return step


def record_request(req: Request, status: int, seconds: float, metrics: Metrics | None, logger: logging.Logger, *,
                   quiet_probes: bool = True) -> None:
    """Count and log req as finished with `status` (also used for a worker timeout)."""
    url_rule, method, path = req.url_rule, req.method, req.path
    rule = url_rule.rule if url_rule else "<unmatched>"  # a bounded label set
    queued = req.environ.get(QUEUE_SECONDS_KEY)  # only behind a proxy that sends X-Request-Start
    if metrics is not None:
        metrics.observe_request(method, rule, status, seconds)
        if queued is not None:
            metrics.observe_queue(queued)
    fields = {
        "method": method,
        "path": rule,
        "raw_path": path,  # never the query string: it may carry tokens
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "request_id": current_request_id() or "",
        "remote_addr": req.remote_addr,
    }
    if queued is not None:
        fields["queue_ms"] = round(queued * 1000, 1)
    logger.log(_level(status, quiet_probes and path in QUIET_PATHS), "request", extra=fields)


def _level(status: int, quiet: bool) -> int:
    """DEBUG for probes; WARNING for 503/504 (expected in an incident, not our bug); ERROR for other 5xx."""
    if quiet:
        return logging.DEBUG
    if status in (503, 504):
        return logging.WARNING
    return logging.ERROR if status >= 500 else logging.INFO


def current_deadline() -> Deadline:
    """The deadline the pipeline set for this request (services get it through create_app's wiring)."""
    deadline = _deadline.get()
    if deadline is None:
        raise RuntimeError("no request deadline: called outside a request's pipeline")
    return deadline


def request_id_for(incoming: str | None, new_id: Callable[[], str]) -> str:
    """The one request-id rule: the caller's id when sane (a proxy's, to join logs), else a new one."""
    return incoming if incoming and SANE_REQUEST_ID.match(incoming) else new_id()


def request_id_factory() -> Callable[[], str]:
    """Ids unique per process: a random prefix (drawn after fork, in create_app) and a counter."""
    prefix = os.urandom(6).hex()
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):010x}"


def budget(header: str | None, default: float) -> float:
    """The request's time budget: the client's shorter X-Request-Timeout (seconds) if sane, else the default."""
    if header:
        try:
            asked = float(header)
        except ValueError:
            return default
        if 0 < asked < default:
            return asked
    return default


def queue_seconds(header: str, now: float) -> float | None:
    """Seconds between the proxy's X-Request-Start and `now` (time.time()); None when absent or absurd.

    `t=1700000000.123` (nginx's $msec) or `1700000000123` (Heroku's milliseconds); the unit is
    told by magnitude, so `t=` forms in micro- or nanoseconds (some proxies send them) also work:
    now in seconds is ~1.7e9, in ms ~1.7e12, in µs ~1.7e15, in ns ~1.7e18. The proxy's wall clock
    against ours: skew between hosts is error in the result. A stamp in the future (skew, or a
    forgery) counts as no queue: a header can only shorten its own request's budget, never extend it.
    """
    value = header[2:] if header.startswith("t=") else header
    try:
        stamp = float(value)
    except ValueError:
        return None
    if not math.isfinite(stamp) or stamp <= 0:
        return None
    if stamp >= 1e17:
        stamp /= 1e9
    elif stamp >= 1e14:
        stamp /= 1e6
    elif stamp >= 1e11:
        stamp /= 1e3
    queued = now - stamp
    if queued > MAX_QUEUE_SECONDS:
        return None
    return max(0.0, queued)
