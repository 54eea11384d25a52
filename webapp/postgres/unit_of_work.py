"""The unit of work: `with uow.begin() as tx:` one transaction, its repositories as attributes.

    with uow.begin(read_only=True) as tx:    # BEGIN READ ONLY; SET LOCAL statement_timeout
        user = tx.users.get(user_id)          # on the first statement, not before
    # leaving without tx.commit() rolls back

cosmicpython's shape, with the request's deadline: create_app hands the unit of work a callable
that returns the deadline of the request in flight, so every transaction begun during a request
is bounded by it (the pool wait, each statement on the server, each wait on the client).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, LiteralString, Protocol

import psycopg
from psycopg.pq import TransactionStatus

from webapp.domain.errors import CommitFailed
from webapp.postgres.database import Database, run_command
from webapp.postgres.errors import translate
from webapp.postgres.repositories import (
    IdempotencyKeyRepository,
    OrderRepository,
    ProductRepository,
    UserRepository,
)
from webapp.resilience import Deadline

log = logging.getLogger(__name__)


class TransactionSpan(Protocol):
    """A transaction's span (observability/tracing.py makes them when tracing is on)."""

    def failed(self, exc: BaseException) -> None: ...

    def ended(self, outcome: str) -> None: ...


# read_only → a context manager that makes the transaction's span current while it runs.
TraceTransaction = Callable[[bool], AbstractContextManager[TransactionSpan]]


class UnitOfWork:
    """Begins transactions on the database, each bounded by the deadline of the request in flight."""

    def __init__(self, database: Database, deadline: Callable[[], Deadline], trace: TraceTransaction | None = None):
        self._database = database
        self._deadline = deadline
        self._trace = trace

    def begin(self, *, read_only: bool = False) -> Transaction:
        """One transaction: commit() keeps its work; leaving the `with` any other way rolls it back."""
        return Transaction(self._database, self._deadline(), read_only, self._trace)

    def ping(self, timeout: float) -> None:
        """Run SELECT 1 within timeout seconds (the client-side cut-off included), or raise: a health check."""
        with Transaction(self._database, Deadline(timeout), read_only=True) as tx:
            tx.execute("SELECT 1")


class Transaction:
    """One transaction, begun on its first statement, with the repositories that run their SQL in it.

    The connection is taken on the first statement, so a block that never needs the database
    (a cache hit) never takes one; it always goes back to the pool when the `with` ends.
    """

    def __init__(self, database: Database, deadline: Deadline, read_only: bool = False,
                 trace: TraceTransaction | None = None):
        self._database = database
        self._deadline = deadline
        self._read_only = read_only
        self._conn: psycopg.Connection[Any] | None = None
        self._committed = False
        self._trace = trace
        self._span_scope: AbstractContextManager[TransactionSpan] | None = None
        self._span: TransactionSpan | None = None
        self.users = UserRepository(self)
        self.products = ProductRepository(self)
        self.orders = OrderRepository(self)
        self.idempotency_keys = IdempotencyKeyRepository(self)

    def __enter__(self) -> Transaction:
        if self._trace is not None:  # tracing on: a span current until the `with` ends (its statements' parent)
            self._span_scope = self._trace(self._read_only)
            self._span = self._span_scope.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.close()
        finally:
            if self._span_scope is not None:
                assert self._span is not None
                self._span.ended("committed" if self._committed and exc[0] is None else "rolled_back")
                self._span_scope.__exit__(*exc)

    def execute(self, query: LiteralString, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        """Run one statement in this transaction; a database failure comes out as a domain error."""
        if self._committed:
            # Our connections are autocommit outside BEGIN: a statement now would silently run on its own.
            raise RuntimeError("statement after commit(): open a new transaction for more work")
        if self._conn is None:
            self._conn = self._database.checkout(self._deadline, self._read_only)
        try:
            return self._conn.execute(query, params)
        except psycopg.Error as exc:
            if self._span is not None:
                self._span.failed(exc)
            translated = translate(exc, self._deadline)
            if translated is None:
                raise
            raise translated from exc

    def commit(self) -> None:
        """COMMIT, or raise: CommitFailed (500), or Unavailable/DeadlineExceeded when the connection died under it."""
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
        except psycopg.Error as exc:
            if self._span is not None:
                self._span.failed(exc)
            # Whether a lost connection committed is unknown; an Idempotency-Key makes the retry safe.
            raise (translate(exc, self._deadline, at_commit=True) or exc) from exc

    def close(self) -> None:
        """Roll back whatever was not committed and return the connection (the end of the `with`)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                run_command(conn, b"ROLLBACK")
        except psycopg.Error:
            log.warning("rollback failed; connection discarded")  # the pool sees it is broken
        finally:
            self._database.release(conn)
