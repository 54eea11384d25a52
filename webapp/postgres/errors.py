"""psycopg's errors in the service's words: the one place a database failure is translated."""

from __future__ import annotations

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from webapp.domain.errors import CommitFailed, DeadlineExceeded, TransientDatabaseError, Unavailable
from webapp.resilience import CircuitOpen, Deadline

NO_ANSWER_IN_TIME = "the database did not answer within the request's deadline"


def is_broken_connection(exc: BaseException) -> bool:
    """A connection that failed or was cut (worth trying another), not a pool that is empty or full."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests
    )


def translate(exc: BaseException, deadline: Deadline, *, at_commit: bool = False) -> Exception | None:
    """The domain error a caller can act on (503, 504, a conflict to retry) for a database failure.

    None means no translation: the psycopg error is a bug of ours (a 500), or a constraint the
    caller handles itself. at_commit: the failure hit COMMIT, so whether it committed is unknown.
    """
    if isinstance(exc, CircuitOpen):
        return Unavailable("database unavailable (a connection just failed or went silent); retry shortly")
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests):
        return Unavailable("no database connection available (pool busy or database unreachable)")
    if isinstance(exc, pg_errors.QueryCanceled):  # statement_timeout: the server's side of the deadline
        return DeadlineExceeded(NO_ANSWER_IN_TIME)
    if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return TransientDatabaseError(f"transaction conflict ({exc.sqlstate}); retry")
    if isinstance(exc, psycopg.OperationalError):
        # The connection failed or died; past the deadline, the watchdog cut a silent server off.
        unknown = "; outcome unknown, retry idempotently" if at_commit else ""
        if deadline.expired():
            return DeadlineExceeded(NO_ANSWER_IN_TIME + unknown)
        return Unavailable("database connection lost" + unknown)
    if at_commit and isinstance(exc, psycopg.Error):
        return CommitFailed(f"COMMIT failed: {type(exc).__name__}")
    return None
