"""Transaction: one database transaction, begun on its first statement, what repositories run SQL through."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg.pq import TransactionStatus

from webapp.connections import domain_error, run_command
from webapp.errors import CommitFailed, DeadlineExceeded, Unavailable
from webapp.resilience import Deadline

if TYPE_CHECKING:  # db.py builds Transactions; this module only calls back into the Database
    from webapp.db import Database

log = logging.getLogger(__name__)


class Transaction:
    """One transaction, begun on its first statement; what repositories run their SQL through.

    A context manager: the end of the `with` block is close(), which rolls back what was not committed.
    """

    def __init__(self, database: Database, deadline: Deadline, read_only: bool):
        self.database = database
        self.deadline = deadline
        self.read_only = read_only
        self._conn: psycopg.Connection[Any] | None = None
        self._committed = False

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, query: LiteralString, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        """Run one statement in this transaction; psycopg errors come out as domain errors where they have one."""
        if self._committed:
            # Our connections are autocommit outside BEGIN: a statement now would silently run on its own.
            raise RuntimeError("statement after commit(): open a new transaction for more work")
        if self._conn is None:
            self._conn = self.database.checkout(self.deadline, self.read_only)
        try:
            return self._conn.execute(query, params)
        except psycopg.Error as exc:
            translated = self._domain_error(exc)
            if translated is None:
                raise
            raise translated from exc

    def commit(self) -> None:
        """COMMIT, or raise: CommitFailed, or Unavailable when the connection died under it."""
        conn = self._conn
        self._committed = True
        if conn is None:
            return  # nothing was run: nothing to commit
        # Trap: after a failed statement Postgres answers COMMIT with ROLLBACK and no error.
        # Checking first turns that silent rollback into an error, never a 2xx.
        if conn.info.transaction_status == TransactionStatus.INERROR:
            raise CommitFailed("transaction was aborted by an earlier error; rolled back")
        try:
            conn.commit()  # on our autocommit connection: sends COMMIT when a transaction is open
        except psycopg.OperationalError as exc:
            # Whether it committed is unknown; an Idempotency-Key makes the client's retry safe.
            if self.deadline.expired():
                raise DeadlineExceeded("the database did not confirm COMMIT in time; outcome unknown") from exc
            raise Unavailable("database connection lost during COMMIT; outcome unknown, retry idempotently") from exc
        except psycopg.Error as exc:
            raise CommitFailed(f"COMMIT failed: {type(exc).__name__}") from exc

    def close(self) -> None:
        """Roll back whatever was not committed and return the connection (end of the `with`)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                run_command(conn, b"ROLLBACK")
        except psycopg.Error:
            log.warning("rollback failed; connection discarded")  # the pool sees it is broken
        finally:
            self.database.release(conn)

    def _domain_error(self, exc: psycopg.Error) -> Exception | None:
        if isinstance(exc, psycopg.OperationalError) and self.deadline.expired():
            # The watchdog cut a silent server off at the deadline (or it died just then).
            return DeadlineExceeded("the database did not answer within the request's deadline")
        return domain_error(exc)
