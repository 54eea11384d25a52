"""The lock probe (issue 19): a migration that alters `users` while a session sits idle in a transaction.

The idle transaction has read `users` (a long report, a stuck client, a `psql` left open), so the
ALTER TABLE waits for its ACCESS EXCLUSIVE lock, and every request that reads `users` queues behind
that waiting lock. Under lock_timeout the wait is cut short (the file rolls back and is retried with
jitter): no GET should wait longer than lock_timeout, plus a little.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.load import Load, Outcome, RequestSpec
from webapp.postgres.migration_files import default_sql_dir
from webapp.postgres.migrations import MigrationError, migrate

PROBE_FILE = "9999_probe_alter_users.sql"
PROBE_SQL = "-- The lock probe: it needs ACCESS EXCLUSIVE on users.\nALTER TABLE users ADD COLUMN probe_note text;\n"


@dataclass(frozen=True)
class ProbeTiming:
    """The probe's knobs: the runner's (lock_timeout, attempts) and how long the idle transaction lasts."""

    lock_timeout: float
    attempts: int
    idle_seconds: float  # how long the session sits idle in its transaction once the migration started
    clients: int = 4
    before: float = 1.0  # GET load before the idle session and the migration
    after: float = 1.0  # GET load after the migration ended
    users: int = 200


@dataclass
class ProbeRun:
    """What the probe saw: every GET, when the migration ran, and how it ended."""

    outcomes: list[Outcome] = field(default_factory=list)
    migration_started: float = 0.0
    migration_ended: float = 0.0
    idle_ended: float = 0.0
    idle_pid: int = 0
    applied: list[str] = field(default_factory=list)
    error: MigrationError | None = None
    unexpected: BaseException | None = None  # anything else the runner raised

    @property
    def during(self) -> list[Outcome]:
        """The GETs started while the migration ran."""
        return [o for o in self.outcomes if self.migration_started <= o.started < self.migration_ended]

    @property
    def max_latency(self) -> float:
        return max((o.elapsed for o in self.outcomes), default=0.0)

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind != "response" or o.status != 200]

    def slower_than(self, seconds: float) -> int:
        return sum(1 for o in self.outcomes if o.elapsed > seconds)

    def error_names_the_lock(self) -> bool:
        """The MigrationError names `users` and the idle session among the holders of its lock."""
        if self.error is None:
            return False
        fields: dict[str, Any] = self.error.fields
        holders = {holder["pid"] for holder in fields.get("held_by", [])}
        return "users" in fields.get("tables", []) and self.idle_pid in holders

    def summary(self) -> dict[str, Any]:
        return {
            "requests": len(self.outcomes), "failed": len(self.failed()), "during_migration": len(self.during),
            "max_get_s": round(self.max_latency, 3),
            "max_get_during_s": round(max((o.elapsed for o in self.during), default=0.0), 3),
            "migration_s": round(self.migration_ended - self.migration_started, 2),
            "idle_s": round(self.idle_ended - self.migration_started, 2),
            "migration": "applied" if self.applied else ("MigrationError" if self.error else repr(self.unexpected)),
        }


def probe_sql_dir(folder: Path) -> Path:
    """Copies of sql/*.sql plus the probe file, in `folder`."""
    for path in sorted(default_sql_dir().glob("*.sql")):
        shutil.copy(path, folder / path.name)
    (folder / PROBE_FILE).write_text(PROBE_SQL)
    return folder


def lock_probe(database_url: str, port: int, timing: ProbeTiming) -> ProbeRun:
    """GET load on the service at `port`, an idle transaction on users, the probe migration in a thread."""
    run = ProbeRun()

    def get_user(_n: int) -> RequestSpec:
        return ("GET", f"/users/{random.randint(1, timing.users)}", None)

    def migrate_probe(sql_dir: Path) -> None:
        try:
            run.applied = migrate(database_url, sql_dir, lock_timeout=timing.lock_timeout, attempts=timing.attempts)
        except MigrationError as exc:
            run.error = exc
        except Exception as exc:  # reported as a failed contract, not a crash of the suite
            run.unexpected = exc
        finally:
            run.migration_ended = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="webapp-lock-probe-") as tmp:
        sql_dir = probe_sql_dir(Path(tmp))
        load = Load(port, get_user, threads=timing.clients, seconds=600).start()
        try:
            time.sleep(timing.before)
            with psycopg.connect(database_url, application_name="lock-probe-idle") as idle:
                idle.execute("SELECT id FROM users LIMIT 1")  # opens the transaction; it now sits idle
                run.idle_pid = idle.info.backend_pid
                migration = threading.Thread(target=migrate_probe, args=(sql_dir,), daemon=True)
                run.migration_started = time.monotonic()
                migration.start()
                migration.join(timing.idle_seconds)
                idle.rollback()
                run.idle_ended = time.monotonic()
            migration.join(timing.attempts * (timing.lock_timeout + 6) + 30)
            if migration.is_alive():
                run.unexpected, run.migration_ended = TimeoutError("the migration never ended"), time.monotonic()
            time.sleep(timing.after)
        finally:
            run.outcomes = load.stop()
    return run
