"""Postgres access: the connection pool, transactions with a deadline, and error translation."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, LiteralString, cast

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from webapp.errors import DeadlineExceeded, TransientDatabaseError, Unavailable
from webapp.resilience import Deadline, RetryError, retry_with_backoff

log = logging.getLogger(__name__)

# A request whose remaining budget is within this of the connection's default statement_timeout
# keeps the default: one statement fewer for Postgres to parse on nearly every request.
DEFAULT_TIMEOUT_SLACK_MS = 100


class CommitFailed(Exception):
    """COMMIT did not commit; the caller must not report success."""


class Database:
    """Owns the pool; hands out connections inside transactions bounded by a Deadline."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        timeout: float = 2.0,
        max_waiting: int = 32,
        name: str = "webapp",
        statement_timeout: float | None = None,
    ):
        self.checkout_timeout = timeout
        self._default_timeout_ms = int(statement_timeout * 1000) if statement_timeout else None
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": 5, "application_name": name}
        # open=False: nothing connects when the app is built. Gunicorn forks workers *after*
        # loading the config; a pool opened in the master would hand dead sockets to workers.
        self.pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,  # bounded queue: the N+1th waiter fails at once (TooManyRequests)
            open=False,
            name=name,
            # autocommit: we send BEGIN ourselves, with the deadline when it is short (_begin_statement).
            kwargs=kwargs,
            configure=self._configure,
        )

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Run once per new connection: its statement_timeout defaults to the full request budget.

        A SET here rather than `options=-c ...` in the connection kwargs, which would silently
        replace any `options` the DATABASE_URL itself carries.
        """
        if self._default_timeout_ms:
            conn.execute(cast(LiteralString, f"SET statement_timeout = {self._default_timeout_ms}"))

    def open(self) -> None:
        """Start the pool's background connections without waiting for them (a worker boots while Postgres is down)."""
        self.pool.open(wait=False)

    def close(self, timeout: float = 5.0) -> None:
        """Close every pooled connection; called when a worker exits."""
        self.pool.close(timeout=timeout)

    def stats(self) -> dict[str, int]:
        """Pool size, idle connections and waiting requests, for the metrics gauges."""
        stats = self.pool.get_stats()
        return {
            "size": stats.get("pool_size", 0),
            "available": stats.get("pool_available", 0),
            "waiting": stats.get("requests_waiting", 0),
        }

    def ping(self, timeout: float) -> None:
        """Run SELECT 1 on a pooled connection within timeout seconds, or raise."""
        deadline = Deadline(timeout)
        with self.transaction(deadline, read_only=True, retries=1) as conn:
            conn.execute("SELECT 1")

    @contextmanager
    def transaction(
        self, deadline: Deadline, *, read_only: bool = False, retries: int = 3
    ) -> Iterator[psycopg.Connection[Any]]:
        """Yield a connection inside BEGIN..COMMIT; roll back on any exception; always return it."""
        conn = self.begin(deadline, read_only=read_only, retries=retries)
        try:
            yield conn
        except BaseException:
            self.end(conn, commit=False)
            raise
        self.end(conn, commit=True, read_only=read_only)

    def begin(self, deadline: Deadline, *, read_only: bool = False, retries: int = 3) -> psycopg.Connection[Any]:
        """Check out a connection (bounded wait) and open a transaction with the deadline's time left.

        read_only: BEGIN READ ONLY, so Postgres itself refuses any write (error 25006).
        """

        def attempt() -> psycopg.Connection[Any]:
            if deadline.expired():
                raise DeadlineExceeded("request deadline passed before the database was reached")
            conn = self.pool.getconn(timeout=deadline.bound(self.checkout_timeout))
            try:
                budget_ms = max(1, int(deadline.remaining() * 1000))
                _exec_command(conn, self._begin_statement(budget_ms, read_only=read_only))
            except BaseException:
                self.pool.putconn(conn)  # a broken connection is discarded by the pool
                raise
            return conn

        # Retrying is safe only here: BEGIN is the first statement, so no work was done yet.
        # A connection that died with a Postgres restart fails on BEGIN; the next one is fresh.
        try:
            return retry_with_backoff(
                attempt,
                attempts=retries,
                base=0.01,
                max_delay=0.2,
                deadline=deadline,
                retry_on=_is_broken_connection,
            )
        except RetryError as exc:
            raise Unavailable("database connection failed") from exc.last_error
        except (psycopg_pool.PoolTimeout, psycopg_pool.TooManyRequests) as exc:
            raise Unavailable("no database connection available (pool busy or database unreachable)") from exc
        except psycopg.OperationalError as exc:
            raise Unavailable("database connection failed") from exc

    def _begin_statement(self, budget_ms: int, *, read_only: bool = False) -> LiteralString:
        """BEGIN, plus the deadline as statement_timeout when it is shorter than the connection's default.

        Both statements travel in ONE round trip (one simple query). Trap: `SET LOCAL
        statement_timeout = %s` with a parameter is a syntax error in psycopg 3 (server-side
        binding cannot bind SET). The value is an int we computed, never user input, so it is
        formatted in; sql.Literal would do the same at ~10 us more a request.
        """
        begin: LiteralString = "BEGIN READ ONLY" if read_only else "BEGIN"
        default = self._default_timeout_ms
        if default is not None and budget_ms >= default - DEFAULT_TIMEOUT_SLACK_MS:
            return begin
        return cast(LiteralString, f"{begin}; SET LOCAL statement_timeout = {int(budget_ms)}")

    def end(self, conn: psycopg.Connection[Any], *, commit: bool, read_only: bool = False) -> None:
        """Commit (raising CommitFailed if it did not happen) or roll back, then return conn to the pool.

        read_only must say what begin() was told: a read-only COMMIT takes the quick path.
        """
        try:
            if commit:
                _commit(conn, read_only=read_only)
            else:
                _rollback(conn)
        finally:
            self.pool.putconn(conn)


def _is_broken_connection(exc: BaseException) -> bool:
    """A connection that failed (worth another one), not a pool that is full (a retry would only queue)."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests
    )


def _exec_command(conn: psycopg.Connection[Any], statement: str) -> None:
    """Run a statement that does no I/O on the server (BEGIN, a read-only COMMIT) through libpq's PQexec.

    One C call, no cursor. Why not conn.execute(): psycopg's Python machinery for one statement
    (a cursor, query conversion, its wait loop) cost ~2 % of GET throughput for BEGIN alone
    (A/B in bench/README.md), for a statement with nothing to adapt or return.
    Trade-off: PQexec blocks in C, where Python signal handlers wait for it to return; these
    statements touch no disk, so a live server answers at once. A read-write COMMIT, which may
    wait on disk or replicas, stays on psycopg's interruptible path (_commit).
    """
    result = conn.pgconn.exec_(statement.encode())
    if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
        # Only a connection that died (a Postgres restart) fails here: begin() retries on another.
        reason = result.error_message.decode(errors="replace").strip() or "no reason given"
        raise psycopg.OperationalError(f"{statement.split(None, 1)[0]} failed: {reason}")


def _commit(conn: psycopg.Connection[Any], *, read_only: bool = False) -> None:
    # Trap: after any failed statement, COMMIT answers "ROLLBACK" without raising.
    # Checking the status first turns that silent rollback into an error (never a 2xx);
    # it is the only way COMMIT ends in a rollback without an error of its own.
    # (pgconn's status is a plain int: conn.info.transaction_status builds two objects a call.)
    if conn.pgconn.transaction_status == TransactionStatus.INERROR:
        _rollback(conn)
        raise CommitFailed("transaction was aborted by an earlier error; rolled back")
    try:
        if read_only:
            _exec_command(conn, "COMMIT")  # wrote nothing: nothing to flush, answered at once
        else:
            # commit() works on our autocommit connections too (it sends COMMIT whenever a
            # transaction is open), and costs less than execute("COMMIT"): no cursor is built.
            conn.commit()
    except psycopg.OperationalError as exc:
        # The connection died under COMMIT (Postgres restarting): a dependency failure, so
        # 503 + Retry-After. Whether it committed is unknown; an Idempotency-Key makes the
        # client's retry safe.
        raise Unavailable("database connection lost during COMMIT; outcome unknown, retry idempotently") from exc
    except psycopg.Error as exc:
        _rollback(conn)
        raise CommitFailed(f"COMMIT failed: {type(exc).__name__}") from exc


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if conn.closed or conn.pgconn.transaction_status == TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK", prepare=False)
    except psycopg.Error:
        # The connection is broken; the pool sees that on putconn and discards it.
        log.warning("rollback failed; connection discarded", exc_info=True)


def domain_error(exc: psycopg.Error) -> Exception | None:
    """The domain error a caller can act on (retry, 503, 504) for a psycopg error, or None."""
    if isinstance(exc, pg_errors.QueryCanceled):
        return DeadlineExceeded("the database did not answer within the request's deadline")
    if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return TransientDatabaseError(f"transaction conflict ({exc.sqlstate}); retry")
    if isinstance(exc, psycopg.OperationalError):
        return Unavailable("database connection lost")
    return None


@contextmanager
def translated_errors() -> Iterator[None]:
    """Raise psycopg errors from the block as domain errors (see domain_error)."""
    try:
        yield
    except psycopg.Error as exc:
        translated = domain_error(exc)
        if translated is None:
            raise
        raise translated from exc
