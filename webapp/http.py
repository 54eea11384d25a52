"""The HTTP edge: request ids, deadlines, body limits, the request log line, and the ONE place
where errors become JSON responses."""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask.sansio.app import App
from flask.sessions import NullSession, SessionInterface
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.sansio.response import Response as SansioResponse

from webapp.errors import (
    Conflict,
    DeadlineExceeded,
    DomainError,
    MalformedRequest,
    NotFound,
    TransientDatabaseError,
    Unavailable,
    ValidationFailed,
)
from webapp.observability import Metrics, RequestLog
from webapp.resilience import CircuitOpen, Deadline

log = logging.getLogger("webapp.http")

REQUEST_ID_HEADER = "X-Request-ID"
# A client may ask for a shorter budget than REQUEST_TIMEOUT (never a longer one).
TIMEOUT_HEADER = "X-Request-Timeout"
_REQUEST_ID_KEY, _TIMEOUT_KEY = ("HTTP_" + h.upper().replace("-", "_") for h in (REQUEST_ID_HEADER, TIMEOUT_HEADER))
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Probes run every few seconds; their log lines go to DEBUG so they do not drown the rest.
QUIET_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})

# Domain error → HTTP status. Order matters: the first matching class wins.
STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (MalformedRequest, 400),
    (NotFound, 404),
    (ValidationFailed, 422),
    (Conflict, 409),
    (DeadlineExceeded, 504),
    (Unavailable, 503),
    (TransientDatabaseError, 503),
    (CircuitOpen, 503),
)
HTTP_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
    415: "unsupported_media_type", 500: "internal_error",
}


class CompactJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with its compact encoder built once, not on every response.

    DefaultJSONProvider.response calls json.dumps(obj, default=..., separators=...), and json.dumps
    given any keyword builds a new JSONEncoder per call: ~5 % of a worker's Python time under load
    (py-spy, bench/README.md). Same bytes out (tests/unit/test_json_provider.py). Keys stay in
    the order the serializers wrote them; debug mode keeps Flask's indented output.
    """

    sort_keys = False

    def __init__(self, app: App) -> None:
        super().__init__(app)
        # Built from the attributes as they are now: set ensure_ascii/default on the class, not later.
        self._encode = json.JSONEncoder(
            default=self.default, ensure_ascii=self.ensure_ascii, sort_keys=self.sort_keys, separators=(",", ":")
        ).encode

    def response(self, *args: Any, **kwargs: Any) -> SansioResponse:
        if self.compact is False or (self.compact is None and self._app.debug):
            return super().response(*args, **kwargs)
        body = self._encode(self._prepare_response_obj(args, kwargs))
        return self._app.response_class(f"{body}\n", mimetype=self.mimetype)


class NoSessions(SessionInterface):
    """No cookie sessions: an API's clients carry their own credentials on every request.

    Flask opens a session on every request; without a secret key it builds a fresh NullSession
    (every write raises) each time. This hands out one NullSession, never reads a cookie and never
    sets one: same behaviour, one object fewer per request, and no session cookie can appear by
    accident (tests/unit/test_sync_flask.py).
    """

    _null = NullSession()

    def open_session(self, app: Flask, request: Any) -> NullSession:
        return self._null

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        return None


class SyncFlask(Flask):
    """Flask for a WSGI app whose views and hooks are all plain functions: they are called as they are.

    Flask asks inspect.iscoroutinefunction about the view and every hook on every request, in
    case one is async (six times a request here, ~1.5 us CPU each: a bench-visible share of the
    request). `assert_sync_only` asks once instead, when the app is built. (Callbacks given to
    `after_this_request` during a request are beyond its reach: keep them plain functions too.)
    """

    json_provider_class = CompactJSONProvider
    session_interface = NoSessions()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        return func

    def assert_sync_only(self) -> None:
        """Refuse to build an app with an async view or hook: under this class it would never be awaited."""
        hooks: list[Callable[..., Any]] = [*self.view_functions.values(), *self.teardown_appcontext_funcs]
        for registry in (self.before_request_funcs, self.after_request_funcs, self.teardown_request_funcs):
            hooks += [f for funcs in registry.values() for f in funcs]
        hooks += [f for by_code in self.error_handler_spec.values() for by_class in by_code.values()
                  for f in by_class.values()]
        async_ones = [getattr(f, "__qualname__", repr(f)) for f in hooks if inspect.iscoroutinefunction(f)]
        if async_ones:
            raise TypeError(f"SyncFlask serves sync functions only; async: {async_ones}")


def error_response(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> Response:
    """Build the single error shape: {"error": {"code", "message", "request_id"[, "fields"]}}."""
    body: dict[str, Any] = {"code": code, "message": message, "request_id": g.get("request_id")}
    if fields:
        body["fields"] = fields
    response = jsonify(error=body)
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


def handle_error(exc: Exception) -> Response:
    """Turn any exception into the JSON error shape; log ours (5xx) with the request id."""
    original = getattr(exc, "original_exception", None)
    if isinstance(exc, InternalServerError) and isinstance(original, DomainError | CircuitOpen):
        # Raised after the view (COMMIT lost its connection): Flask wraps it as a 500, but it
        # means what it says, e.g. 503 + Retry-After.
        exc = original
    if isinstance(exc, DomainError | CircuitOpen):
        status = next(s for cls, s in STATUS_BY_ERROR if isinstance(exc, cls))
        if status >= 500:
            log.error("request failed: %s", exc, exc_info=exc)
        code = getattr(exc, "code", "service_unavailable")
        return error_response(status, code, str(exc), getattr(exc, "fields", None))
    if isinstance(exc, HTTPException) and not isinstance(exc, InternalServerError):
        status = exc.code or 500
        response = error_response(status, HTTP_CODES.get(status, f"http_{status}"), exc.description or exc.name)
        if status == 405 and isinstance(exc, HTTPException):
            response.headers["Allow"] = dict(exc.get_headers()).get("Allow", "")
        return response
    # Ours. Flask has already logged an InternalServerError that wraps an exception raised
    # after the view (e.g. a failed COMMIT); anything else is logged here, once.
    if getattr(exc, "original_exception", None) is None:
        log.error("unhandled exception", exc_info=exc)
    return error_response(500, "internal_error", "internal error; quote the request id when reporting it")


def install(
    app: Flask, *, request_timeout: float, max_body_bytes: int, metrics: Metrics, request_log: RequestLog
) -> None:
    """Register the request hooks and the error handler on app."""
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes  # chunked bodies have no Content-Length

    new_request_id = request_id_factory()

    @app.before_request
    def start_request() -> Response | None:
        # These hooks run on every request: each proxy lookup of `request`/`g` costs ~1 us,
        # so they are resolved once.
        req, state = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        state.started = time.perf_counter()
        # The WSGI environ, not req.headers: the same values without a header-name translation each.
        environ = req.environ
        incoming = environ.get(_REQUEST_ID_KEY)
        state.request_id = incoming if incoming and _SANE_REQUEST_ID.match(incoming) else new_request_id()
        state.deadline = Deadline(_budget(environ.get(_TIMEOUT_KEY), request_timeout))
        # Checked from the header, before a byte of the body is read (most requests have none).
        if "CONTENT_LENGTH" in environ and (req.content_length or 0) > max_body_bytes:
            return error_response(413, "payload_too_large", f"request body exceeds {max_body_bytes} bytes")
        # Unrouted requests keep their 404/405: a wrong path is not a wrong content type.
        if req.method in _BODY_METHODS and req.routing_exception is None and req.mimetype != "application/json":
            return error_response(415, "unsupported_media_type", "send the body as application/json")
        return None

    @app.after_request
    def finish_request(response: Response) -> Response:
        # Registered before the transaction hook, so it runs after it (Flask runs after_request
        # hooks in reverse): the status logged is the status after COMMIT.
        state = g._get_current_object()
        # add, not item assignment: no view sets this header, so there is no old value to look for.
        response.headers.add(REQUEST_ID_HEADER, getattr(state, "request_id", ""))
        account_request(response.status_code, metrics, request_log)
        return response

    app.register_error_handler(Exception, handle_error)


def account_request(
    status: int, metrics: Metrics | None, request_log: RequestLog | None, *, quiet_probes: bool = True
) -> None:
    """Count and log the current request as finished with `status` (the one request line)."""
    # Runs on every request: each proxy lookup of `request`/`g` costs ~1 us, so they are resolved once.
    req, state = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
    rule = req.url_rule.rule if req.url_rule else "<unmatched>"  # bounded label set
    seconds = time.perf_counter() - getattr(state, "started", time.perf_counter())
    if metrics is not None:
        metrics.observe_request(req.method, rule, status, seconds)
    (request_log or RequestLog(log)).write(
        method=req.method,
        path=rule,
        raw_path=req.path,  # never the query string: it may carry tokens
        status=status,
        duration_ms=round(seconds * 1000, 2),
        request_id=getattr(state, "request_id", ""),
        remote_addr=req.environ.get("REMOTE_ADDR"),  # = req.remote_addr, without the property
        quiet=quiet_probes and req.path in QUIET_PATHS,
    )


def request_id_factory() -> Callable[[], str]:
    """Ids unique per process: a random prefix (drawn after fork) and a counter.

    uuid4 reads the OS's randomness on every call; ids need to be unique, not secret.
    """
    prefix = os.urandom(6).hex()
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):010x}"


def _budget(header: str | None, default: float) -> float:
    """The request's time budget: the client's shorter X-Request-Timeout (seconds) if sane, else the default."""
    if header:
        try:
            asked = float(header)
        except ValueError:
            return default
        if 0 < asked < default:
            return asked
    return default
