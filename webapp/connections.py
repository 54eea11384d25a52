"""What travels over each pooled connection: its libpq settings, BEGIN with the deadline, the
one speed trick, and psycopg errors in the service's words. Used by db.py."""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from webapp.errors import DeadlineExceeded, TransientDatabaseError, Unavailable
from webapp.resilience import Deadline

# psycopg's default: a statement run this many times on a connection is prepared on the server.
PREPARE_THRESHOLD = 5


def connection_kwargs(name: str, prepared_statements: bool | None) -> dict[str, Any]:
    """libpq/psycopg settings for every pooled connection: client-only, nothing the server keeps.

    prepared_statements: True or False as the operator says; None (auto) starts without and
    lets prepare_when_direct turn them on for a connection that provably reaches Postgres itself.
    """
    return {
        # We send BEGIN ourselves, with the deadline in it (begin_statement).
        "autocommit": True,
        "application_name": name,
        "connect_timeout": 5,
        # A link that drops packets (not one that answers RST) is noticed by TCP itself, for idle
        # pooled connections too: keepalive probes, and a cap on unacknowledged data (ms).
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 15_000,
        # Server-side prepared statements live in the server session: through PgBouncer < 1.21 in
        # transaction mode the next statement may land on another server connection ("prepared
        # statement _pg3_0 does not exist", or worse, another statement's result). None = never.
        "prepare_threshold": PREPARE_THRESHOLD if prepared_statements else None,
    }


def is_pooled(conn: psycopg.Connection[Any]) -> bool:
    """True when conn reaches Postgres through a pooler (PgBouncer, PgCat, Supavisor, RDS Proxy...).

    At connect, libpq is told a backend process id (BackendKeyData, for cancel requests). Postgres
    sends its own; a pooler cannot, since the client's statements run on whichever server
    connection is free, so it sends one it made up (PgBouncer: a random cancel key). Asking the
    server which process runs this statement tells the two apart: direct, the ids are the same.
    One round trip per new connection, in the pool's background thread, never in a request.
    """
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return row is None or row[0] != conn.info.backend_pid


def prepare_when_direct(conn: psycopg.Connection[Any]) -> bool:
    """Turn on server-side prepared statements for conn when nothing pools it; return whether it did.

    Through a transaction-mode pooler a prepared statement lives on one server connection and the
    next statement may run on another, so the safe side is the default: only a connection proven
    direct prepares. Measured straight to Postgres: bench/README.md ("prepared statements").
    """
    if is_pooled(conn):
        return False
    conn.prepare_threshold = PREPARE_THRESHOLD
    return True


def begin_statement(deadline: Deadline, read_only: bool) -> bytes:
    """BEGIN with the deadline's time left as SET LOCAL statement_timeout: one simple query, one round trip.

    SET LOCAL ends with the transaction, so no other client of a pooler's server connection
    ever sees it. Trap: SET takes no bind parameters (`SET LOCAL statement_timeout = %s` is a
    syntax error in psycopg 3), so the value, an int we computed, is formatted in; bytes, since
    psycopg sends a parameterless query as one simple query, both statements in one round trip.
    GET/HEAD use READ ONLY: Postgres itself then refuses any write (error 25006).
    """
    budget_ms = max(1, int(deadline.remaining() * 1000))
    mode = b"BEGIN READ ONLY" if read_only else b"BEGIN"
    return mode + b"; SET LOCAL statement_timeout = %d" % budget_ms


def is_broken_connection(exc: BaseException) -> bool:
    """A connection that failed or was cut (worth trying another), not a pool that is empty or full."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(
        exc, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests
    )


def domain_error(exc: psycopg.Error) -> Exception | None:
    """The domain error a caller can act on (retry, 503, 504) for a psycopg error, or None."""
    if isinstance(exc, pg_errors.QueryCanceled):
        return DeadlineExceeded("the database did not answer within the request's deadline")
    if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return TransientDatabaseError(f"transaction conflict ({exc.sqlstate}); retry")
    if isinstance(exc, psycopg.OperationalError):
        return Unavailable("database connection lost")
    return None


def run_command(conn: psycopg.Connection[Any], command: bytes) -> None:
    """THE speed trick of this module: BEGIN and ROLLBACK through libpq's PQexec, one C call.

    psycopg's conn.execute() builds a cursor, converts the query and steps a generator through
    its wait loop: for these two statements, which take no parameters and return no rows, that
    measured 7.9 % of all instructions per GET (`python -m bench.instructions`, 1,253k → 1,154k).
    pgconn.exec_ is psycopg's documented low-level libpq API; it releases the GIL while it
    waits, so the watchdog can still cut a silent server. COMMIT stays on conn.commit(), which
    waits on disk and replicas and whose errors matter.
    """
    result = conn.pgconn.exec_(command)
    if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
        # Only a connection that died (or was cut) fails here: checkout retries on another one.
        reason = result.error_message.decode(errors="replace").strip() or "no reason given"
        raise psycopg.OperationalError(f"{command.split(None, 1)[0].decode()} failed: {reason}")
