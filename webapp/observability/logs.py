"""Structured JSON logs: one formatter for the app's and gunicorn's lines, set up by create_app and gunicorn,
and the request fields stamped on every line written during a request."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import IO, Any

from pythonjsonlogger.orjson import OrjsonFormatter

from webapp.settings import mask_secrets

HANDLER_NAME = "webapp-json"
CONSOLE_HANDLER_NAME = "webapp-console"  # LOG_FORMAT=console; configure_logging replaces either kind
# From a "?" to the end of the message: gunicorn quotes a rejected request line raw, so the query
# string may hold quotes and spaces, and nothing tells where it ends. Losing the rest of a rare
# gunicorn message is cheaper than a token in the log. ("...out of memory?" has nothing after it.)
_QUERY_STRING = re.compile(r"\?.+", re.DOTALL)


# The id of the request in flight: set by the pipeline's first step (web/pipeline.py), reset when
# the request ends. A ContextVar, as Flask keeps its own request: each request (each thread) sees
# only its own, and log filters, error bodies and gunicorn's hooks read it without an app context.
REQUEST_ID: ContextVar[str | None] = ContextVar("webapp.request_id", default=None)
# With tracing on, the pipeline's trace step sets this to a function returning the (trace_id,
# span_id) of the span current at the call, so a line logged inside a SQL span names that span.
# Off, it stays None: one lookup per line, no OpenTelemetry import.
TRACE_IDS: ContextVar[Callable[[], tuple[str, str]] | None] = ContextVar("webapp.trace_ids", default=None)


def current_request_id() -> str | None:
    """The id of the request in flight, or None outside one."""
    return REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Stamp every record logged during a request with that request's id (and trace_id, span_id when traced)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = current_request_id()
            if request_id is not None:  # a request is in flight in this thread
                record.request_id = request_id
        trace_ids = TRACE_IDS.get()
        if trace_ids is not None and not hasattr(record, "trace_id"):
            record.trace_id, record.span_id = trace_ids()
        return True


class RedactQueryStrings(logging.Filter):
    """Cut query strings out of gunicorn's own messages (e.g. "Invalid request line 'GET /x?token=...'").

    Our request line never logs a query string; gunicorn's error log quotes the raw request line
    when it rejects one. Its messages are rare, so re-rendering them here costs nothing.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("gunicorn"):
            record.msg = _QUERY_STRING.sub("?<redacted>", record.getMessage())
            record.args = None
        return True


class MaskSecrets(logging.Filter):
    """Mask passwords in every line's message, whoever logged it (mask_secrets); tracebacks are
    masked by the formatters (formatException), so the record keeps its exc_info for other handlers.

    Our own code masks what it logs; a driver's message does not: psycopg's pool quotes libpq's
    errors, which may quote a host misread from a password.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            message = record.getMessage()
            masked = mask_secrets(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True


class JsonLineFormatter(OrjsonFormatter):
    """python-json-logger's orjson formatter with this service's fixed fields, in this order:
    time (UTC, ms), level, logger, pid, message, then whatever came in through `extra=`.

    add_fields and formatTime are the library's and logging's documented places to override:
    the fields are named here once, instead of the library renaming and sifting them per line.
    """

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = record.asctime
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["pid"] = record.process  # tells gunicorn's workers apart
        log_data["message"] = record.message
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS:  # it came in through extra=
                log_data[key] = value
        log_data.update(message_dict)  # exc_info, stack_info, or the fields of a dict logged as the message

    def formatException(self, ei: Any) -> str | list[str]:  # type: ignore[override]  # the library widens it
        text = super().formatException(ei)  # the library may return the traceback as a list of lines
        return mask_secrets(text) if isinstance(text, str) else [mask_secrets(line) for line in text]

    def formatStack(self, stack_info: str) -> str | list[str]:  # type: ignore[override]
        text = super().formatStack(stack_info)
        return mask_secrets(text) if isinstance(text, str) else [mask_secrets(line) for line in text]

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # UTC, with milliseconds: they order the lines of one shutdown.
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def json_formatter() -> JsonLineFormatter:
    """The one formatter for app and gunicorn lines (a JsonLineFormatter)."""
    return JsonLineFormatter("%(asctime)s %(message)s")  # asctime: the library then calls formatTime


class ConsoleFormatter(logging.Formatter):
    """LOG_FORMAT=console: `12:00:01.234 INFO  webapp.http [pid]: message key=value ...` for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s [%(process)d]: %(message)s", "%H:%M:%S")
        self.default_msec_format = "%s.%03d"

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _RECORD_FIELDS)
        line = super().format(record)  # its traceback may come cached from another handler: mask it all
        return mask_secrets(f"{line} {extras}" if extras else line)


# What every LogRecord carries; anything else on a record came in through `extra=`.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class StdoutHandler(logging.StreamHandler):
    """A StreamHandler on sys.stdout as it is at each write, not as it was when logging was set up.

    Test runners swap sys.stdout per test and close the old one; a handler holding it would
    fail on the next line (an atexit hook's, say) with "I/O operation on closed file".
    """

    @property
    def stream(self) -> IO[str]:
        return sys.stdout

    @stream.setter
    def stream(self, _ignored: IO[str]) -> None:
        pass


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A stdout handler that writes one JSON object per line, with request ids and no query strings."""
    return _stdout_handler(HANDLER_NAME, json_formatter(), stream)


def console_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A stdout handler that writes readable lines (LOG_FORMAT=console), with request ids and no query strings."""
    return _stdout_handler(CONSOLE_HANDLER_NAME, ConsoleFormatter(), stream)


def _stdout_handler(name: str, formatter: logging.Formatter, stream: IO[str] | None) -> logging.Handler:
    handler = logging.StreamHandler(stream) if stream is not None else StdoutHandler()
    handler.set_name(name)
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactQueryStrings())
    handler.addFilter(MaskSecrets())
    return handler


def configure_logging(level: str, stream: IO[str] | None = None, log_format: str | None = None) -> None:
    """Send every logger's records, and Python's warnings, to one stdout handler at `level` (idempotent).

    log_format is "json" (one object per line) or "console"; None keeps the format already set
    up in this process (a gunicorn worker inherits its master's), else JSON.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() in (HANDLER_NAME, CONSOLE_HANDLER_NAME)]
    if log_format is None:
        log_format = "console" if any(h.get_name() == CONSOLE_HANDLER_NAME for h in ours) else "json"
    for handler in ours:
        # create_app may run twice in one process (tests), and under gunicorn the master's
        # handler (gunicorn_logconfig) is inherited by every worker: replace, never stack.
        root.removeHandler(handler)
    root.addHandler(console_handler(stream) if log_format == "console" else json_handler(stream))
    root.setLevel(level.upper())
    # Else a warning (a ResourceWarning, a DeprecationWarning) is printed as plain text on stderr.
    logging.captureWarnings(True)
    # Werkzeug's dev-server access log would duplicate our request line.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def gunicorn_logconfig(level: str, log_format: str = "json") -> dict[str, Any]:
    """logging.config dict for gunicorn's master: its own log and ours, as JSON (or console) lines on stdout.

    gunicorn's loggers propagate to the root handler, which is named like configure_logging's,
    so a worker's create_app replaces it instead of printing every line twice.
    """
    console = log_format == "console"
    name, factory = (CONSOLE_HANDLER_NAME, "console_handler") if console else (HANDLER_NAME, "json_handler")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {name: {"()": f"webapp.observability.logs.{factory}"}},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": True},
        },
        "root": {"level": level.upper(), "handlers": [name]},
    }
