"""Apply sql/NNNN_*.sql files in order, once each, under a Postgres advisory lock."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
# Any constant works; it only has to be the same for every migrate run against one database.
MIGRATION_LOCK_ID = 7_345_001
_FILENAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    """Return the numbered migration files in the order they must run."""
    files = sorted(p for p in sql_dir.iterdir() if _FILENAME.match(p.name))
    numbers = [p.name[:4] for p in files]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two migrations share a number in {sql_dir}")
    return files


def migrate(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply pending migrations; return the names applied. Safe to run concurrently."""
    applied: list[str] = []
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        # A session-level advisory lock serialises concurrent `migrate` runs (two release
        # phases, two developers): the second waits, then finds nothing left to do.
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for path in migration_files(sql_dir):
                if path.name in done:
                    continue
                # Each file and its bookkeeping row commit together, or neither does.
                with conn.transaction():
                    conn.execute(path.read_text())  # trusted file, no params: simple query protocol
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.name,))
                log.info("migration applied", extra={"migration": path.name})
                applied.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied
