"""Apply sql/NNNN_*.sql files in order, once each, all in one transaction under a Postgres advisory lock."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every migrate run against one database.
MIGRATION_LOCK_ID = 7_345_001
_FILENAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def default_sql_dir() -> Path:
    """The migrations: inside the package in an installed wheel, beside it in a checkout (or editable install)."""
    # setup.cfg maps the top-level sql/ into the wheel as the package folder webapp/sql.
    package = Path(__file__).resolve().parent.parent
    installed = package / "sql"
    return installed if installed.is_dir() else package.parent / "sql"


def migration_files(sql_dir: Path | None = None) -> list[Path]:
    """Return the numbered migration files in the order they must run."""
    sql_dir = sql_dir or default_sql_dir()
    files = sorted(p for p in sql_dir.iterdir() if _FILENAME.match(p.name))
    numbers = [p.name[:4] for p in files]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two migrations share a number in {sql_dir}")
    return files


def migrate(database_url: str, sql_dir: Path | None = None) -> list[str]:
    """Apply pending migrations, all or none; return the names applied. Safe to run concurrently.

    One transaction holds everything: the lock, the bookkeeping table, every pending file and its
    row. So a failure leaves nothing half-made (Postgres DDL is transactional), and nothing lives
    beyond the transaction, which is all a transaction-mode pooler (PgBouncer) keeps on one server
    connection: no session advisory lock, no SET, no prepared statement.
    """
    files = migration_files(sql_dir)  # before connecting: a missing folder fails with nothing touched
    # prepare_threshold=None: a named prepared statement outlives its transaction (pooler-unsafe).
    with psycopg.connect(database_url, connect_timeout=10, prepare_threshold=None) as conn, conn.transaction():
        # Serialises concurrent runs (two release phases): the second waits here until the first
        # commits, then sees its rows and finds nothing left to do. Released at COMMIT or ROLLBACK.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        pending = [path for path in files if path.name not in done]
        for path in pending:
            # Trusted file, no params: the simple query protocol runs every statement in it. A file
            # must not COMMIT or use CREATE INDEX CONCURRENTLY (neither runs inside a transaction).
            conn.execute(path.read_text())
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.name,))
            log.info("migration ran", extra={"migration": path.name})
    applied = [path.name for path in pending]
    if applied:
        log.info("migrations committed", extra={"applied": applied})
    return applied
