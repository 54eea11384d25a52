"""webapp migrate|check|serve|dev|purge-idempotency-keys — the run() pattern: main() returns an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from webapp.settings import Config, ConfigError, config_variables, load_config, mask_url, with_dotenv

log = logging.getLogger("webapp.main")

# The variables webapp.gunicorn.settings reads (webapp/gunicorn/server_settings.py), on top of the app's own.
SERVER_VARIABLES = (
    "PORT", "BIND_HOST", "WEB_CONCURRENCY", "GUNICORN_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT",
    "SHUTDOWN_DRAIN_SECONDS", "PRESTOP_SECONDS", "STOP_WINDOW_SECONDS", "GUNICORN_BACKLOG",
    "GUNICORN_MAX_REQUESTS", "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_CMD_ARGS",
)
LOGGING_VARIABLES = ("LOG_LEVEL", "LOG_FORMAT")
# name: (what it does, the variables it reads beyond the logging ones; None: all of the app's)
COMMANDS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "migrate": ("apply the pending sql/ migrations, each file in its own transaction under a short "
                "lock_timeout (retried with jitter), and exit; the Procfile's release phase",
                ("DATABASE_URL", "MIGRATION_LOCK_TIMEOUT", "MIGRATION_ATTEMPTS", "MIGRATION_STATEMENT_TIMEOUT")),
    "check": ("validate the whole configuration, then connect to Postgres once; "
              "exit 1 saying why (refused, timeout, DNS, authentication)", None),
    "serve": ("exec gunicorn with webapp's settings (webapp.gunicorn.settings) serving webapp:create_app()",
              None),
    "dev": ("`make run`: migrate, then serve in the foreground; without DATABASE_URL an embedded Postgres "
            "in ./.pgdata (the [embedded] extra) is started first and stopped on Ctrl-C", None),
    "purge-idempotency-keys": ("delete Idempotency-Keys older than IDEMPOTENCY_RETENTION_HOURS; "
                               "run it from a scheduler", ("DATABASE_URL", "IDEMPOTENCY_RETENTION_HOURS")),
}
DOTENV_NOTE = (
    "Every command first reads .env (the nearest from the working directory upwards); variables "
    "already set win; FLASK_SKIP_DOTENV=1 skips it. .env.example lists the variables."
)


def parser() -> argparse.ArgumentParser:
    """The command line: `webapp --help` lists the commands, `webapp <command> --help` what each reads."""
    root = argparse.ArgumentParser(prog="webapp", description="Run the webapp service's commands.",
                                   epilog=DOTENV_NOTE)
    commands = root.add_subparsers(dest="command", required=True, metavar="command")
    for name, (summary, variables) in COMMANDS.items():
        if variables is None:
            names = list(config_variables()) + (list(SERVER_VARIABLES) if name in ("serve", "dev") else [])
            reads = ", ".join(dict.fromkeys(names))
        else:
            reads = ", ".join((*variables, *LOGGING_VARIABLES))
        commands.add_parser(name, help=summary, description=summary, epilog=f"Reads: {reads}. {DOTENV_NOTE}")
    return root


def main(argv: Sequence[str], environ: Mapping[str, str], stderr: TextIO = sys.stderr) -> int:
    """Run one command and return its exit status; never calls sys.exit itself (but --help does)."""
    args = parser().parse_args(argv)
    if args.command == "dev":  # it may make the DATABASE_URL the others need, so it runs first
        from webapp.gunicorn.devserver import run_dev
        from webapp.observability.logs import configure_logging

        # Before the embedded Postgres is imported: its warnings become log lines too.
        configure_logging("info", log_format="console" if environ.get("LOG_FORMAT") == "console" else "json")

        return run_dev(environ, stderr)
    try:
        config = load_config(environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=stderr)  # one readable line, no traceback
        return 1
    from webapp.observability.logs import configure_logging

    configure_logging(config.log_level, log_format=config.log_format)
    if args.command == "migrate":
        return _migrate(config, stderr)
    if args.command == "check":
        return _check(config.database_url, stderr)
    if args.command == "purge-idempotency-keys":
        return _purge_idempotency_keys(config.database_url, config.idempotency_retention_hours)
    return _serve(environ)


def _migrate(config: Config, stderr: TextIO) -> int:
    from webapp.postgres.migrations import MigrationError, migrate

    try:
        applied = migrate(config.database_url, lock_timeout=config.migration_lock_timeout,
                          attempts=config.migration_attempts, statement_timeout=config.migration_statement_timeout)
    except MigrationError as exc:  # one JSON line: which file, which statement, which lock, held by whom
        log.error("migration failed", extra={"reason": str(exc), **exc.fields})
        print(f"error: migration failed: {exc}", file=stderr)
        return 1
    except Exception as exc:  # report, do not dump a traceback with a DSN in it
        log.error("migration failed", extra={"reason": f"{type(exc).__name__}: {mask_url(str(exc))}"})
        print(f"error: migration failed: {type(exc).__name__}: {mask_url(str(exc))}", file=stderr)
        return 1
    log.info("migrations done", extra={"applied": applied})
    return 0


def _check(database_url: str, stderr: TextIO) -> int:
    from webapp.postgres.connection import connection_failure, server_version

    try:
        version = server_version(database_url)
    except Exception as exc:  # psycopg.Error: libpq's text, masked, and the reason in a few words
        first_line = (str(exc).strip().splitlines() or [""])[0].removeprefix("connection failed: ")
        reason = f"{connection_failure(exc)} ({mask_url(first_line)})"
        print(f"error: cannot connect to {mask_url(database_url)}: {reason}", file=stderr)
        return 1
    log.info("configuration ok", extra={"database": mask_url(database_url), "server_version": version})
    return 0


def _purge_idempotency_keys(database_url: str, retention_hours: int) -> int:
    """Delete Idempotency-Keys past their retention (run it from a scheduler, e.g. hourly)."""
    from webapp.postgres.database import Database
    from webapp.postgres.unit_of_work import UnitOfWork
    from webapp.resilience import Deadline

    with Database(database_url, min_size=0, max_size=1, timeout=10) as database, \
            UnitOfWork(database, deadline=lambda: Deadline(60)).begin() as tx:
        deleted = tx.idempotency_keys.delete_expired(retention_hours)
        tx.commit()
    log.info("expired idempotency keys deleted", extra={"deleted": deleted, "retention_hours": retention_hours})
    return 0


def _serve(environ: Mapping[str, str]) -> int:
    """Replace this process with gunicorn under webapp.gunicorn.settings, whatever the working directory."""
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:webapp.gunicorn.settings", "webapp:create_app()"]
    os.execve(sys.executable, argv, dict(environ))
    return 1  # not reached: exec replaced the process


def entrypoint() -> None:
    """Console-script entry: the one place that reads the real environment (and .env) and exits."""
    sys.exit(main(sys.argv[1:], with_dotenv(os.environ)))


