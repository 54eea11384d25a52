"""The pool and its breaker: connections checked out inside BEGIN, bounded by a request's deadline.

Everything here is safe behind a transaction-mode pooler (PgBouncer): nothing outlives a
transaction on the server. No session SET (the deadline travels with each BEGIN as SET LOCAL),
server-side prepared statements only on a connection proven to reach Postgres directly
(connection.prepare_when_direct; DB_PREPARED_STATEMENTS overrides), transaction-scoped advisory
locks only. docs/operations.md, "Behind a pooler", says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool

from webapp.domain.errors import DeadlineExceeded
from webapp.postgres.connection import connection_kwargs, prepare_when_direct
from webapp.postgres.errors import is_broken_connection, translate
from webapp.postgres.watchdog import Watchdog
from webapp.resilience import HALF_OPEN, CircuitBreaker, Deadline, RetryError, retry_with_backoff

log = logging.getLogger(__name__)


class Database:
    """Owns the pool; hands out connections inside BEGIN, bounded by a Deadline (the unit of work's)."""

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
        on_connect: Callable[[psycopg.Connection[Any]], None] | None = None,
    ):
        self.checkout_timeout = timeout
        self.trial_timeout = trial_timeout
        self.breaker = breaker or database_breaker()
        self.watchdog = Watchdog()
        self._auto_prepare = prepared_statements is None
        self._on_connect = on_connect  # e.g. tracing's instrumentation: a span per statement
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
            configure=self._configure,
        )
        self.direct: bool | None = None  # what the last new connection found (auto only), for the log

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        if self._auto_prepare:
            self._prepare_when_direct(conn)
        if self._on_connect is not None:
            self._on_connect(conn)

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

    def checkout(self, deadline: Deadline, read_only: bool) -> psycopg.Connection[Any]:
        """A connection inside BEGIN, with the deadline's time left as its statement_timeout.

        Fails fast (503) while the breaker is open: one connection failure or silent server
        opens it, and for the next BREAKER reset period requests do not queue up behind a dead
        database; the first request after it is the trial that closes it again.
        """
        try:
            return self.breaker.call(self._checkout_with_retry, deadline, read_only)
        except Exception as exc:
            translated = translate(exc, deadline)
            if translated is None:
                raise
            raise translated from exc

    def _checkout_with_retry(self, deadline: Deadline, read_only: bool) -> psycopg.Connection[Any]:
        # Retrying is safe only here: BEGIN is the first statement, so no work was done yet.
        # A connection that died with a Postgres restart fails on BEGIN; the next one is fresh.
        # The trial call of a half-open breaker is a probe: all its attempts together wait at most
        # trial_timeout, not a deadline each, so a database still silent costs one worker about a
        # second, not a request's budget.
        trial = self.breaker.state == HALF_OPEN
        wait = Deadline(min(deadline.remaining(), self.trial_timeout)) if trial else deadline
        try:
            return retry_with_backoff(
                lambda: self._begin(deadline, wait, read_only, trial),
                attempts=3, base=0.01, max_delay=0.2, deadline=wait, retry_on=is_broken_connection,
            )
        except RetryError as exc:
            raise exc.last_error from exc  # the breaker judges the last error, not the wrapper

    def _begin(self, deadline: Deadline, wait: Deadline, read_only: bool, trial: bool) -> psycopg.Connection[Any]:
        if deadline.expired():
            raise DeadlineExceeded("request deadline passed before the database was reached")
        seconds = wait.remaining()
        conn = self.pool.getconn(timeout=min(self.checkout_timeout, seconds))
        # (A trial's grace is inside its trial_timeout: the watchdog adds the grace to what it is given.)
        self.watchdog.arm(conn, conn.fileno(), max(0.0, seconds - self.watchdog.grace) if trial else seconds)
        try:
            run_command(conn, begin_statement(deadline, read_only))
        except BaseException:
            self.release(conn)
            raise
        if trial:  # it answered: the rest of the request has its whole deadline again
            self.watchdog.arm(conn, conn.fileno(), deadline.remaining())
        return conn

    def release(self, conn: psycopg.Connection[Any]) -> None:
        """Give conn back to the pool; one the watchdog cut is closed first, so it is never reused."""
        if self.watchdog.disarm(conn):
            conn.close()
            self.breaker.record_failure()  # silent past a whole deadline: the next requests fail fast
        self.pool.putconn(conn)  # the pool discards a closed or broken connection


def begin_statement(deadline: Deadline, read_only: bool) -> bytes:
    """BEGIN with the deadline's time left as SET LOCAL statement_timeout: one simple query, one round trip.

    SET LOCAL ends with the transaction, so no other client of a pooler's server connection
    ever sees it. Trap: SET takes no bind parameters (`SET LOCAL statement_timeout = %s` is a
    syntax error in psycopg 3), so the value, an int we computed, is formatted in. Bytes, for
    run_command's PQexec: the simple query protocol runs both statements in one round trip.
    A service's read (`begin(read_only=True)`) is READ ONLY: Postgres itself refuses a write (25006).
    """
    budget_ms = max(1, int(deadline.remaining() * 1000))
    mode = b"BEGIN READ ONLY" if read_only else b"BEGIN"
    return mode + b"; SET LOCAL statement_timeout = %d" % budget_ms


def run_command(conn: psycopg.Connection[Any], command: bytes) -> None:
    """THE speed trick of this service: BEGIN and ROLLBACK through libpq's PQexec, one C call.

    psycopg's conn.execute() builds a cursor, converts the query and steps a generator through
    its wait loop, all wasted on statements that take no parameters and return no rows (what
    it saves per request: bench/README.md, "The one speed trick"). pgconn.exec_ is psycopg's
    documented low-level libpq API; it releases the GIL while it waits, so the watchdog can
    still cut a silent server. COMMIT stays on conn.commit(), whose errors matter.
    """
    result = conn.pgconn.exec_(command)
    if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
        # Only a connection that died (or was cut) fails here: checkout retries on another one.
        reason = result.error_message.decode(errors="replace").strip() or "no reason given"
        raise psycopg.OperationalError(f"{command.split(None, 1)[0].decode()} failed: {reason}")


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
