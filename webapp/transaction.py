"""The per-request transaction (the seed's WithTransaction): begun lazily, committed before the response."""

from __future__ import annotations

from typing import Any

import psycopg
from flask import Flask, Response, g

from webapp.db import Database
from webapp.resilience import Deadline

_KEY = "_transaction"


class RequestTransaction:
    """One Postgres transaction per request, checked out on first use and finished exactly once.

    Repositories receive `connection` (a bound method) and call it for every query, so a
    request that never touches the database (health, metrics, 404s) never takes a connection.
    """

    def __init__(self, database: Database, default_timeout: float):
        self.database = database
        self.default_timeout = default_timeout

    def connection(self) -> psycopg.Connection[Any]:
        """Return this request's connection, beginning the transaction on first call."""
        conn = g.get(_KEY)
        if conn is None:
            deadline = g.get("deadline") or Deadline(self.default_timeout)
            conn = self.database.begin(deadline)
            setattr(g, _KEY, conn)
        return conn

    def finish(self, *, commit: bool) -> None:
        """Commit or roll back and give the connection back; a no-op when none was taken."""
        conn = g.pop(_KEY, None)  # popped first: a failing commit must not be finished twice
        if conn is not None:
            self.database.end(conn, commit=commit)

    def restart(self) -> None:
        """Roll back and forget the transaction; the next query begins a fresh one (whole-transaction retry)."""
        self.finish(commit=False)

    def install(self, app: Flask) -> None:
        """Commit before the response leaves (status < 400), roll back otherwise, always release."""

        def commit_or_rollback(response: Response) -> Response:
            # Runs before the body is sent. If COMMIT fails this raises, Flask turns it into
            # our JSON 500, and the client never sees the 2xx the view had prepared.
            self.finish(commit=response.status_code < 400)
            return response

        def release(_exc: BaseException | None) -> None:
            # Safety net for paths that skip after_request (an error inside another hook).
            self.finish(commit=False)

        app.after_request(commit_or_rollback)
        app.teardown_request(release)
