"""python -m webapp migrate|check|serve|dev|purge-idempotency-keys — the run() pattern: main() returns an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from webapp.config import ConfigError, load_config, mask_url

log = logging.getLogger("webapp.main")


def main(argv: Sequence[str], environ: Mapping[str, str], stderr: TextIO = sys.stderr) -> int:
    """Run one command and return its exit status; never calls sys.exit itself."""
    parser = argparse.ArgumentParser(prog="webapp", description=__doc__)
    parser.add_argument("command", choices=["migrate", "check", "serve", "dev", "purge-idempotency-keys"])
    args = parser.parse_args(argv)
    if args.command == "dev":  # it makes the DATABASE_URL the others need, so it runs first
        from webapp.devserver import run_dev

        return run_dev(environ, stderr)
    try:
        config = load_config(environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=stderr)  # one readable message, no traceback
        return 1
    from webapp.observability import configure_logging

    configure_logging(config.log_level)
    if args.command == "migrate":
        from webapp.migrate import migrate

        try:
            applied = migrate(config.database_url)
        except Exception as exc:  # report, do not dump a traceback with a DSN in it
            print(f"error: migration failed: {type(exc).__name__}: {mask_url(str(exc))}", file=stderr)
            return 1
        log.info("migrations done", extra={"applied": applied})
        return 0
    if args.command == "check":
        return _check(config.database_url, stderr)
    if args.command == "purge-idempotency-keys":
        return _purge_idempotency_keys(config.database_url, config.idempotency_retention_hours)
    return _serve(environ)


def _check(database_url: str, stderr: TextIO) -> int:
    import psycopg

    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        print(f"error: cannot reach {mask_url(database_url)}: {type(exc).__name__}", file=stderr)
        return 1
    server_version = version[0] if version else "?"
    log.info("configuration ok", extra={"database": mask_url(database_url), "server_version": server_version})
    return 0


def _purge_idempotency_keys(database_url: str, retention_hours: int) -> int:
    """Delete Idempotency-Keys past their retention (run it from a scheduler, e.g. hourly)."""
    from webapp.db import Database
    from webapp.repositories import IdempotencyRepository
    from webapp.resilience import Deadline

    database = Database(database_url, min_size=0, max_size=1, timeout=10)
    database.open()
    try:
        with database.transaction(Deadline(60)) as tx:
            deleted = IdempotencyRepository(lambda: tx).delete_expired(retention_hours)
            tx.commit()
    finally:
        database.close()
    log.info("expired idempotency keys deleted", extra={"deleted": deleted, "retention_hours": retention_hours})
    return 0


def _serve(environ: Mapping[str, str]) -> int:
    """Replace this process with gunicorn serving webapp:create_app() under gunicorn.conf.py."""
    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gunicorn.conf.py")
    argv = [sys.executable, "-m", "gunicorn", "--config", conf, "webapp:create_app()"]
    os.execve(sys.executable, argv, dict(environ))
    return 1  # not reached: exec replaced the process


def entrypoint() -> None:
    """Console-script entry: the one place that turns main()'s result into an exit status."""
    sys.exit(main(sys.argv[1:], os.environ))


if __name__ == "__main__":
    entrypoint()
