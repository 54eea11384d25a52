"""Errors become HTTP here, and only here: every exception → the one JSON error shape.

    {"error": {"code": "...", "message": "...", "request_id": "...", "fields": {...}?}}

Domain errors are mapped by class (STATUS_BY_ERROR); werkzeug's HTTP errors (404, 405, 413, ...)
keep their status; anything else is ours: a 500, logged once with its traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Request, Response, jsonify
from werkzeug.exceptions import HTTPException

from webapp.domain.errors import (
    CommitFailed,
    Conflict,
    DeadlineExceeded,
    DomainError,
    MalformedRequest,
    NotFound,
    TransientDatabaseError,
    Unavailable,
    ValidationFailed,
)
from webapp.observability.logs import current_request_id
from webapp.web.pipeline import Handler

log = logging.getLogger("webapp.http")

# Domain error → HTTP status. Order matters: the first matching class wins.
STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (MalformedRequest, 400),
    (NotFound, 404),
    (ValidationFailed, 422),
    (Conflict, 409),
    (DeadlineExceeded, 504),
    (Unavailable, 503),
    (TransientDatabaseError, 503),
)
# The error code of each HTTP status the service (or its worker, webapp/gunicorn/wire.py) answers itself.
HTTP_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    417: "expectation_failed", 431: "request_header_fields_too_large", 500: "internal_error",
    501: "not_implemented", 503: "service_unavailable", 504: "deadline_exceeded",
}
RETRY_AFTER_SECONDS = 1
# Where a 5xx's exception is left for the trace step (the same key as observability/tracing.py's).
ERROR_ENVIRON_KEY = "webapp.error"


def errors_to_http(next_handler: Handler) -> Handler:
    """The pipeline's errors step: whatever the steps inside raise is answered in JSON."""

    def handler(req: Request) -> Response:
        try:
            return next_handler(req)
        except Exception as exc:
            response = error_for(exc)
            if response.status_code >= 500:
                req.environ[ERROR_ENVIRON_KEY] = exc  # for the server span, when traced (observability/tracing.py)
            return response

    return handler


def error_for(exc: Exception) -> Response:
    """The response for exc; a failure of ours is logged here, once, with the request id."""
    if isinstance(exc, DomainError):
        status = next(s for cls, s in STATUS_BY_ERROR if isinstance(exc, cls))
        if status >= 500:
            # Expected in an incident (database down or slow, a conflict to retry): the request line
            # carries the status; a traceback would only bury the cause.
            log.warning("request failed: %s", exc)
        return error_response(status, exc.code, exc.message, exc.fields)
    if isinstance(exc, HTTPException) and (exc.code or 500) < 400:
        return exc.get_response()  # type: ignore[return-value]  # a routing redirect (308 to add a slash)
    if isinstance(exc, HTTPException) and (exc.code or 500) < 500:
        status = exc.code or 400
        response = error_response(status, code_for(status), exc.description or exc.name)
        if status == 405:
            response.headers["Allow"] = dict(exc.get_headers()).get("Allow", "")
        return response
    if isinstance(exc, CommitFailed):
        log.error("commit failed: %s", exc)  # no traceback: the message says all there is
    else:
        log.error("unhandled exception", exc_info=exc)
    return error_response(500, "internal_error", "internal error; quote the request id when reporting it")


def code_for(status: int) -> str:
    """The error code for an HTTP status (HTTP_CODES), e.g. 404 -> not_found."""
    return HTTP_CODES.get(status, f"http_{status}")


def error_body(code: str, message: str, request_id: str | None, fields: dict[str, str] | None = None) -> dict[str, Any]:
    """THE error shape, built here only: {"error": {"code", "message", "request_id"[, "fields"]}}."""
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if fields:
        body["fields"] = fields
    return {"error": body}


def error_response(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> Response:
    """The error shape as a Flask response for the request in flight (503s say when to retry)."""
    response = jsonify(error_body(code, message, current_request_id(), fields))
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
