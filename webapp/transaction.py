"""The per-request transaction (the seed's WithTransaction): begun lazily, committed before the response."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
from flask import Flask, Response, g, request

from webapp.db import Database
from webapp.resilience import Deadline

_KEY = "_transaction"
_AFTER_COMMIT = "_after_commit"
# Safe methods must not change anything (RFC 9110): their transactions are READ ONLY, so
# Postgres refuses a write from one (error 25006, a 500 that a test would catch) and their
# COMMIT, having nothing to flush, takes the quick path (db._commit).
READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

log = logging.getLogger(__name__)


class RequestTransaction:
    """One Postgres transaction per request, checked out on first use and finished exactly once.

    Repositories receive `connection` (a bound method) and call it for every query, so a
    request that never touches the database (health, metrics, 404s) never takes a connection.
    GET, HEAD and OPTIONS run READ ONLY.
    """

    def __init__(self, database: Database, default_timeout: float):
        self.database = database
        self.default_timeout = default_timeout

    def connection(self) -> psycopg.Connection[Any]:
        """Return this request's connection, beginning the transaction on first call."""
        state = g._get_current_object()  # one proxy lookup: runs per query
        conn = state.get(_KEY)
        if conn is None:
            deadline = state.get("deadline") or Deadline(self.default_timeout)
            conn = self.database.begin(deadline, read_only=_read_only())
            setattr(state, _KEY, conn)
        return conn

    def finish(self, *, commit: bool) -> None:
        """Commit or roll back and give the connection back; a no-op when none was taken."""
        state = g._get_current_object()  # runs twice a request: one lookup
        conn = state.pop(_KEY, None)  # popped first: a failing commit must not be finished twice
        callbacks = state.pop(_AFTER_COMMIT, None)  # dropped on rollback and on restart()
        if conn is not None:
            # Raises if COMMIT failed: callbacks never run.
            self.database.end(conn, commit=commit, read_only=_read_only())
        if commit and callbacks:
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    # The data is committed: a failing side effect must not turn that into a 500.
                    log.exception("after-commit callback failed")

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run callback once this request's transaction has committed (e.g. evict a cache entry); never on rollback."""
        # After, not before: evicting before COMMIT lets a concurrent reader re-cache the old row
        # in between. Still before the response is sent, so the client reads its own write.
        g.setdefault(_AFTER_COMMIT, []).append(callback)

    def restart(self) -> None:
        """Roll back and forget the transaction; the next query begins a fresh one (whole-transaction retry)."""
        self.finish(commit=False)

    def install(self, app: Flask) -> None:
        """Commit before the response leaves (status < 400), roll back otherwise, always release."""

        def commit_or_rollback(response: Response) -> Response:
            # Runs before the body is sent. If COMMIT fails this raises, http.handle_error turns
            # it into our JSON 500 (503 if the connection died), never the 2xx the view prepared.
            self.finish(commit=response.status_code < 400)
            return response

        def release(_exc: BaseException | None) -> None:
            # Safety net for paths that skip after_request (an error inside another hook).
            self.finish(commit=False)

        app.after_request(commit_or_rollback)
        app.teardown_request(release)


def _read_only() -> bool:
    """Whether this request's transaction is READ ONLY: derived from its method, at BEGIN and at COMMIT alike."""
    return request.method in READ_ONLY_METHODS
