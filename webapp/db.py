"""Postgres access: the pool, and transactions bounded by a deadline (the seed's WithTransaction;
the Transaction itself is in transaction.py).

Everything here is safe behind a transaction-mode pooler (PgBouncer): nothing outlives a
transaction on the server. No session SET (the deadline travels with each BEGIN as SET LOCAL),
server-side prepared statements only on a connection proven to reach Postgres directly
(connections.prepare_when_direct; DB_PREPARED_STATEMENTS overrides), transaction-scoped advisory
locks only. docs/operations.md, "Behind a pooler", says why.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import psycopg_pool

from webapp.connections import (
    begin_statement,
    connection_kwargs,
    is_broken_connection,
    prepare_when_direct,
    run_command,
)
from webapp.errors import DeadlineExceeded, Unavailable
from webapp.resilience import HALF_OPEN, CircuitBreaker, CircuitOpen, Deadline
from webapp.retry import RetryError, retry_with_backoff
from webapp.transaction import Transaction
from webapp.watchdog import Watchdog

log = logging.getLogger(__name__)


class Database:
    """Owns the pool; hands out connections inside transactions bounded by a Deadline."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 2,
        timeout: float = 2.0,
        max_waiting: int = 32,
        prepared_statements: bool | None = None,
        breaker: CircuitBreaker | None = None,
        trial_timeout: float = 1.0,
        name: str = "webapp",
    ):
        self.checkout_timeout = timeout
        self.trial_timeout = trial_timeout
        self.breaker = breaker or database_breaker()
        self.watchdog = Watchdog()
        self.pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,  # bounded queue: the N+1th waiter fails at once (TooManyRequests)
            # open=False: the pool starts in open(), called by create_app in the worker. Gunicorn
            # forks workers after loading the config; a pool opened in the master would hand
            # the same sockets to every worker.
            open=False,
            name=name,
            kwargs=connection_kwargs(name, prepared_statements),
            # None (auto): each new connection checks whether a pooler sits in between.
            configure=self._prepare_when_direct if prepared_statements is None else None,
        )
        self.direct: bool | None = None  # what the last new connection found (auto only), for the log

    def _prepare_when_direct(self, conn: psycopg.Connection[Any]) -> None:
        direct = prepare_when_direct(conn)
        if direct != self.direct:  # once per worker, and again if the path to Postgres changes
            self.direct = direct
            path = "straight to Postgres" if direct else "through a pooler"
            log.info("database connections go %s", path, extra={"prepared_statements": direct})

    def open(self) -> None:
        """Start connecting in the background without waiting (a worker boots while Postgres is down)."""
        self.pool.open(wait=False)

    def close(self, timeout: float = 5.0) -> None:
        """Close every pooled connection and the watchdog; called when a worker exits."""
        self.pool.close(timeout=timeout)
        self.watchdog.close()

    def __enter__(self) -> Database:
        """`with Database(...) as database:` opens it, and closes it at the end (the CLI, tests)."""
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, int]:
        """Pool size, idle connections and waiting requests, for the metrics gauges."""
        stats = self.pool.get_stats()
        return {
            "size": stats.get("pool_size", 0),
            "available": stats.get("pool_available", 0),
            "waiting": stats.get("requests_waiting", 0),
        }

    def ping(self, timeout: float) -> None:
        """Run SELECT 1 within timeout seconds (the client-side cut-off included), or raise."""
        with self.transaction(Deadline(timeout), read_only=True) as tx:
            tx.execute("SELECT 1")

    def transaction(self, deadline: Deadline, *, read_only: bool = False) -> Transaction:
        """`with db.transaction(deadline) as tx:` ... `tx.commit()`; leaving without commit() rolls back.

        The connection is taken on the first statement, so a block that never needs the
        database (a cache hit) never takes one; it always goes back to the pool at the end.
        """
        return Transaction(self, deadline, read_only)

    def checkout(self, deadline: Deadline, read_only: bool) -> psycopg.Connection[Any]:
        """A connection inside BEGIN, with the deadline's time left as its statement_timeout.

        Fails fast (503) while the breaker is open: one connection failure or silent server
        opens it, and for the next BREAKER reset period requests do not queue up behind a dead
        database; the first request after it is the trial that closes it again.
        """
        try:
            return self.breaker.call(self._checkout_with_retry, deadline, read_only)
        except CircuitOpen as exc:
            raise Unavailable("database unavailable (a connection just failed or went silent); retry shortly") from exc
        except psycopg.OperationalError as exc:
            if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests):
                raise Unavailable("no database connection available (pool busy or database unreachable)") from exc
            if deadline.expired():  # the server stayed silent until the watchdog cut it off
                raise DeadlineExceeded("the database did not answer within the request's deadline") from exc
            raise Unavailable("database connection failed") from exc

    def _checkout_with_retry(self, deadline: Deadline, read_only: bool) -> psycopg.Connection[Any]:
        # Retrying is safe only here: BEGIN is the first statement, so no work was done yet.
        # A connection that died with a Postgres restart fails on BEGIN; the next one is fresh.
        try:
            return retry_with_backoff(
                lambda: self._begin(deadline, read_only),
                attempts=3, base=0.01, max_delay=0.2, deadline=deadline, retry_on=is_broken_connection,
            )
        except RetryError as exc:
            raise exc.last_error from exc  # the breaker judges the last error, not the wrapper

    def _begin(self, deadline: Deadline, read_only: bool) -> psycopg.Connection[Any]:
        if deadline.expired():
            raise DeadlineExceeded("request deadline passed before the database was reached")
        # The trial call of a half-open breaker is a probe: it waits trial_timeout, not a whole
        # deadline, so a database still silent costs one worker a second, not a request's budget.
        trial = self.breaker.state == HALF_OPEN
        wait = min(deadline.remaining(), self.trial_timeout) if trial else deadline.remaining()
        conn = self.pool.getconn(timeout=min(self.checkout_timeout, wait))
        # (A trial's grace is inside its trial_timeout: the watchdog adds the grace to what it is given.)
        self.watchdog.arm(conn, conn.pgconn.socket, max(0.0, wait - self.watchdog.grace) if trial else wait)
        try:
            run_command(conn, begin_statement(deadline, read_only))
        except BaseException:
            self.release(conn)
            raise
        if trial:  # it answered: the rest of the request has its whole deadline again
            self.watchdog.arm(conn, conn.pgconn.socket, deadline.remaining())
        return conn

    def release(self, conn: psycopg.Connection[Any]) -> None:
        """Give conn back to the pool; one the watchdog cut is closed first, so it is never reused."""
        if self.watchdog.disarm(conn):
            conn.close()
            self.breaker.record_failure()  # silent past a whole deadline: the next requests fail fast
        self.pool.putconn(conn)  # the pool discards a closed or broken connection


def database_breaker(threshold: int = 1, reset_after: float = 1.0, **kwargs: Any) -> CircuitBreaker:
    """The breaker in front of checkout: a connection that failed or went silent opens it.

    One failure is enough: a server silent past a whole deadline, or a connection refused, is no
    blip, and every request queued behind it would wait as long for the same answer. While open,
    requests get 503 at once; after reset_after one call (often a readiness probe, bounded by
    HEALTH_TIMEOUT) is the trial. A checkout that times out is load while the breaker is closed
    (it never opens it), but a failed trial while half-open: the pool still cannot reach Postgres.
    """

    def is_failure(exc: BaseException) -> bool:
        trial = breaker.state == HALF_OPEN  # read outside the breaker's lock: call() holds none here
        return is_broken_connection(exc) or (trial and isinstance(exc, psycopg_pool.PoolTimeout))

    breaker = CircuitBreaker("database", threshold=threshold, reset_after=reset_after, is_failure=is_failure, **kwargs)
    return breaker
