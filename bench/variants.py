"""The service with one layer taken out at a time, to price each layer (used by bench.profile only).

Built through create_app's own override points (metrics=, database=, config=), so every variant
is the real composition root minus exactly one thing; nothing in webapp/ is patched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import psycopg
from flask import Flask

from webapp import create_app as create_service
from webapp.config import load_config
from webapp.db import Database, _commit
from webapp.observability import Metrics
from webapp.resilience import Deadline


class NullMetrics(Metrics):
    """Metrics that record nothing: the request counter, histogram and pool gauges cost zero."""

    def observe_request(
        self, method: str, path: str, status: int, seconds: float
    ) -> None:
        pass

    def sample_pool(self, stats: dict[str, int], *, every: float = 1.0) -> None:
        pass


class PlainBeginDatabase(Database):
    """BEGIN without the statement_timeout (and without the retry wrapper around checkout)."""

    def begin(self, deadline: Deadline, *, retries: int = 3) -> psycopg.Connection[Any]:
        conn = self.pool.getconn(timeout=self.checkout_timeout)
        conn.execute("BEGIN")
        return conn


class TunedDatabase(Database):
    """The suggested db.py: BEGIN text built with %-formatting of our own int, COMMIT never prepared."""

    def begin(self, deadline: Deadline, *, retries: int = 3) -> psycopg.Connection[Any]:
        conn = self.pool.getconn(timeout=deadline.bound(self.checkout_timeout))
        # An int we computed, so plain formatting is safe; sql.SQL(...).format(Literal) costs ~10 us.
        conn.execute(
            b"BEGIN; SET LOCAL statement_timeout = %d"
            % max(1, int(deadline.remaining() * 1000))
        )
        return conn

    def end(self, conn: psycopg.Connection[Any], *, commit: bool) -> None:
        try:
            if commit:
                # prepare=False: psycopg otherwise turns COMMIT into a server-side prepared
                # statement after 5 uses and pays the extended-protocol path on every request.
                if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                    _commit(conn)  # raises CommitFailed, as before
                elif conn.execute("COMMIT", prepare=False).statusmessage != "COMMIT":
                    raise RuntimeError("COMMIT did not commit")
            elif conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK", prepare=False)
        finally:
            self.pool.putconn(conn)


class ConnectionTimeoutDatabase(Database):
    """Suggested: statement_timeout = REQUEST_TIMEOUT once per connection; SET LOCAL only when shorter.

    statement_timeout bounds each statement, so a per-connection default equal to the request
    budget gives the same bound in the common case; only a shorter budget (X-Request-Timeout, or
    time already spent) needs the extra statement. The real code's retry stays out of this sketch.
    """

    def __init__(self, conninfo: str, *, default_timeout: float, **kwargs: Any):
        super().__init__(conninfo, **kwargs)
        self._default_ms = int(default_timeout * 1000)
        assert isinstance(self.pool.kwargs, dict)  # Database passes a dict
        self.pool.kwargs["options"] = f"-c statement_timeout={self._default_ms}"

    def begin(self, deadline: Deadline, *, retries: int = 3) -> psycopg.Connection[Any]:
        conn = self.pool.getconn(timeout=deadline.bound(self.checkout_timeout))
        budget_ms = max(1, int(deadline.remaining() * 1000))
        if (
            budget_ms >= self._default_ms - 100
        ):  # 100 ms of slack: the checkout itself took some
            conn.execute("BEGIN")
        else:
            conn.execute(b"BEGIN; SET LOCAL statement_timeout = %d" % budget_ms)
        return conn


def direct_request_log(app: Flask) -> None:
    """Suggested: the request line as one json.dumps + write, bypassing logging's records/filters/handler."""
    import sys
    import time as _time

    from flask import g, request

    stream = sys.stdout

    @app.after_request
    def write_line(response: Any) -> Any:
        rule = request.url_rule.rule if request.url_rule else "<unmatched>"
        line = {
            "time": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime()),
            "level": "INFO",
            "logger": "webapp.http",
            "message": "request",
            "method": request.method,
            "path": rule,
            "raw_path": request.path,
            "status": response.status_code,
            "request_id": g.get("request_id"),
            "remote_addr": request.remote_addr,
        }
        stream.write(json.dumps(line) + "\n")
        return response


_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
}


class FastJsonFormatter(logging.Formatter):
    """Same fields as the python-json-logger formatter, built with one json.dumps."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(
            (k, v) for k, v in record.__dict__.items() if k not in _RECORD_FIELDS
        )
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def create_app(*remove: str) -> Flask:
    """The service without the named layers: "log", "metrics", "deadline" (any combination),
    or with a suggested fix: "fastlog" (formatter), "fastdb" (BEGIN/COMMIT text),
    "directlog" (request line without logging), "conndeadline" (per-connection statement_timeout)."""
    config = load_config()
    if "log" in remove:
        config = dataclasses.replace(
            config, log_level="warning"
        )  # the request line is INFO
    overrides: dict[str, Any] = {}
    if "metrics" in remove:
        overrides["metrics"] = NullMetrics()
    database_class = (
        PlainBeginDatabase
        if "deadline" in remove
        else TunedDatabase
        if "fastdb" in remove
        else None
    )
    if "conndeadline" in remove:
        overrides["database"] = ConnectionTimeoutDatabase(
            config.database_url,
            default_timeout=config.request_timeout,
            min_size=config.db_pool_min,
            max_size=config.db_pool_max,
            timeout=config.db_pool_timeout,
            max_waiting=config.db_pool_max_waiting,
        )
    if "directlog" in remove:
        config = dataclasses.replace(config, log_level="warning")
    if database_class is not None:
        overrides["database"] = database_class(
            config.database_url,
            min_size=config.db_pool_min,
            max_size=config.db_pool_max,
            timeout=config.db_pool_timeout,
            max_waiting=config.db_pool_max_waiting,
        )
    app = create_service(config, **overrides)
    if "directlog" in remove:
        direct_request_log(app)
    if "fastlog" in remove:
        for handler in logging.getLogger().handlers:
            if handler.get_name() == "webapp-json":
                handler.setFormatter(FastJsonFormatter())
    return app
