"""`webapp migrate`: apply sql/NNNN_*.sql in order, once each, while the release before keeps serving.

Each file runs in a transaction of its own, with its schema_migrations row: all of the file or none
of it. Every statement waits for its locks at most lock_timeout: a lock not granted in time cancels
the statement (which frees every request queued behind it), the file rolls back, and it is tried
again after a backoff with jitter, a bounded number of times; then the run fails, naming the lock.
A file whose first lines say `-- migrate: no-transaction` runs statement by statement outside a
transaction (CREATE INDEX CONCURRENTLY), and `-- migrate: batches` repeats each statement until it
touches no row (a backfill in short transactions). An applied file edited afterwards is refused by
its checksum, never skipped. One run at a time: a lease row (crash-safe: it expires), never a
session lock, so a run is safe through a transaction pooler. docs/operations.md, "Releasing".
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from webapp.postgres.connection import is_pooled
from webapp.postgres.migration_files import MigrationFile, code_of, migration_files
from webapp.postgres.migration_lease import Lease
from webapp.resilience import RetryError, retry_with_backoff

log = logging.getLogger(__name__)

# Any constant: it only serialises the creation of the bookkeeping tables by concurrent runs.
BOOKKEEPING_LOCK_ID = 7_345_001
BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    # Added after files were already applied without one: such a row adopts the file's checksum once.
    "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text",
    "CREATE TABLE IF NOT EXISTS schema_migrations_lease ("
    " id boolean PRIMARY KEY DEFAULT true CHECK (id), holder text NOT NULL, expires_at timestamptz NOT NULL)",
)


class MigrationError(Exception):
    """The run stopped: what went wrong, and fields for its one log line (never a value from a row)."""

    def __init__(self, message: str, **fields: Any):
        super().__init__(message)
        self.fields = fields


def migrate(
    database_url: str,
    sql_dir: Path | None = None,
    *,
    lock_timeout: float = 2.0,
    statement_timeout: float = 300.0,
    attempts: int = 5,
    lease_seconds: float = 30.0,
    lease_wait: float = 900.0,
) -> list[str]:
    """Apply the pending migrations; return the names applied. Raises MigrationError, the files before it kept."""
    files = [MigrationFile.read(path) for path in migration_files(sql_dir)]  # before connecting
    # prepare_threshold=None: a named prepared statement outlives its transaction (pooler-unsafe).
    with psycopg.connect(database_url, autocommit=True, prepare_threshold=None, connect_timeout=10,
                         application_name="webapp-migrate") as conn:
        with conn.transaction():  # two first runs at once: one creates the tables, the other waits
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOOKKEEPING_LOCK_ID,))
            for statement in BOOKKEEPING:
                conn.execute(statement)
        with Lease(database_url, seconds=lease_seconds).held(wait=lease_wait) as lease:
            pending = _pending(conn, files)
            direct = not is_pooled(conn)
            for migration in pending:
                lease.check()  # a run that lost its lease (a frozen process) must not go on
                if not migration.transactional and not direct:
                    raise MigrationError(
                        "a no-transaction migration needs a direct connection to Postgres: through a "
                        "transaction pooler its lock_timeout cannot be set (point DATABASE_URL at Postgres "
                        "for the release phase)", migration=migration.name)
                _apply(conn, migration, lock_timeout, statement_timeout, attempts)
    return [migration.name for migration in pending]


def _pending(conn: psycopg.Connection[Any], files: list[MigrationFile]) -> list[MigrationFile]:
    """The files not applied yet; refuses an applied file that was edited since (its checksum)."""
    applied = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    for migration in files:
        if migration.name not in applied:
            continue
        recorded = applied[migration.name]
        if recorded is None:  # applied before checksums were kept: adopt the file as it is now
            conn.execute("UPDATE schema_migrations SET checksum = %s WHERE version = %s",
                         (migration.checksum, migration.name))
        elif recorded != migration.checksum:
            raise MigrationError(f"{migration.name} was changed after it was applied: put the change in a new file",
                                 migration=migration.name)
    return [migration for migration in files if migration.name not in applied]


def _apply(conn: psycopg.Connection[Any], migration: MigrationFile, lock_timeout: float, statement_timeout: float,
           attempts: int) -> None:
    """Run one file (with retries when a lock was not granted in time) and record it."""
    run = _in_transaction if migration.transactional else _statement_by_statement
    waited: list[dict[str, Any]] = []

    def note_retry(attempt: int, exc: BaseException) -> None:
        waited.append(_lock_report(conn, exc))
        log.warning("migration waited too long for a lock; rolled back, retrying",
                    extra={"migration": migration.name, "attempt": attempt, **waited[-1]})

    try:
        retry_with_backoff(lambda: run(conn, migration, lock_timeout, statement_timeout), attempts=attempts,
                           base=0.5, max_delay=5.0, retry_on=(pg_errors.LockNotAvailable,), before_retry=note_retry)
    except RetryError as exc:
        report = _lock_report(conn, exc.last_error)
        raise MigrationError(f"{migration.name}: a lock was not granted within {lock_timeout:g} s, "
                             f"{exc.attempts} times; nothing of it was applied", migration=migration.name,
                             attempts=exc.attempts, lock_timeout_s=lock_timeout, **report) from exc.last_error
    except pg_errors.QueryCanceled as exc:
        raise MigrationError(f"{migration.name}: a statement ran longer than {statement_timeout:g} s "
                             "(MIGRATION_STATEMENT_TIMEOUT); nothing of it was applied", migration=migration.name,
                             statement=_summary(getattr(exc, "statement", ""))) from exc
    log.info("migration applied", extra={"migration": migration.name, "transactional": migration.transactional,
                                         "attempts": len(waited) + 1})


def _in_transaction(conn: psycopg.Connection[Any], migration: MigrationFile, lock_timeout: float,
                    statement_timeout: float) -> None:
    with conn.transaction():
        # SET LOCAL ends with the transaction: nothing is left on a pooled server connection.
        conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout * 1000)}")
        conn.execute(f"SET LOCAL statement_timeout = {int(statement_timeout * 1000)}")
        for statement in migration.statements:
            _execute(conn, statement)
        conn.execute("INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                     (migration.name, migration.checksum))


def _statement_by_statement(conn: psycopg.Connection[Any], migration: MigrationFile, lock_timeout: float,
                            statement_timeout: float) -> None:
    # Session settings, on the direct connection migrate() insisted on; reset whatever happens. Each
    # statement must be safe to run again: a run that failed half-way runs the whole file next time.
    conn.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
    conn.execute(f"SET statement_timeout = {int(statement_timeout * 1000)}")
    try:
        for statement in migration.statements:
            _drop_invalid_index(conn, statement)
            while _execute(conn, statement) > 0 and migration.batches:
                pass  # each batch is its own short transaction; the next one starts where it stopped
        conn.execute("INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                     (migration.name, migration.checksum))
    finally:
        conn.execute("RESET lock_timeout")
        conn.execute("RESET statement_timeout")


def _execute(conn: psycopg.Connection[Any], statement: str) -> int:
    """Run one statement; its text rides on the error (for the failure's log line). Returns the rows touched."""
    try:
        return conn.execute(statement.encode()).rowcount  # bytes: trusted file text, no parameters
    except psycopg.Error as exc:
        exc.statement = statement  # type: ignore[attr-defined]
        raise


_CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(\"?[\w.]+\"?)", re.IGNORECASE)


def _drop_invalid_index(conn: psycopg.Connection[Any], statement: str) -> None:
    """Drop the INVALID index a failed CREATE INDEX CONCURRENTLY left, so that it is built again.

    Trap: the failed build leaves the index in the catalog, unusable but maintained on every write,
    and `IF NOT EXISTS` would then skip it silently.
    """
    match = _CONCURRENT_INDEX.search(code_of(statement))
    if match is None:
        return
    row = conn.execute("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                       (match.group(1),)).fetchone()
    if row and row[0]:
        log.warning("dropping an invalid index left by a failed run", extra={"index": match.group(1)})
        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {match.group(1)}".encode())


_RELATIONS = re.compile(
    r"\b(?:TABLE|ON|INTO|UPDATE|FROM|JOIN|REFERENCES)\s+(?:ONLY\s+|IF\s+(?:NOT\s+)?EXISTS\s+)*(\"?[\w.]+\"?)",
    re.IGNORECASE)


def _lock_report(conn: psycopg.Connection[Any], exc: BaseException) -> dict[str, Any]:
    """Which statement waited, on which tables, behind which sessions (pid, state, age; never their query)."""
    statement = code_of(getattr(exc, "statement", ""))
    tables = sorted({name.strip('"') for name in _RELATIONS.findall(statement)})
    holders = conn.execute(
        "SELECT DISTINCT l.relation::regclass::text, l.mode, a.pid, a.state, a.application_name,"
        " round(extract(epoch FROM now() - a.xact_start))::int FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.granted AND l.relation IN (SELECT to_regclass(t) FROM unnest(%s::text[]) t)"
        " AND l.pid <> pg_backend_pid() ORDER BY 3",
        (tables,),
    ).fetchall()
    return {
        "statement": _summary(statement),
        "tables": tables,
        "held_by": [{"table": t, "mode": m, "pid": p, "state": s, "application_name": n, "transaction_age_s": age}
                    for t, m, p, s, n, age in holders],
    }


def _summary(statement: str) -> str:
    return " ".join(code_of(statement).split())[:200]


