"""The lock probe through real gunicorn: a migration altering `users` behind an idle transaction that read it.

Every GET /users/<id> queues behind the ALTER's waiting ACCESS EXCLUSIVE lock; webapp migrate's
lock_timeout bounds that queue (bench/lock_probe.py, and `make fault migration_lock_probe`).
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from bench.lock_probe import PROBE_FILE, ProbeTiming, lock_probe
from bench.seed import seed
from tests.gunicorn_server import GunicornServer, fresh_database, run_gunicorn

pytestmark = pytest.mark.slow

LOCK_TIMEOUT = 0.5
BOUND = LOCK_TIMEOUT + 0.5  # the lock wait, plus the request's own time on a busy machine
USERS = 50


@pytest.fixture(scope="module")
def served(server_url: str) -> Iterator[tuple[str, GunicornServer]]:
    """This release on a migrated, seeded database of its own, through real gunicorn."""
    with fresh_database(server_url) as url:
        seed(url, users=USERS, products=1)
        with run_gunicorn(url, workers=2) as server:
            yield url, server


@pytest.fixture
def service(served: tuple[str, GunicornServer]) -> Iterator[tuple[str, GunicornServer]]:
    """The served database without the probe's column, before and after each test."""
    url, _ = served

    def forget_the_probe() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE users DROP COLUMN IF EXISTS probe_note")
            conn.execute("DELETE FROM schema_migrations WHERE version = %s", (PROBE_FILE,))

    forget_the_probe()
    yield served
    forget_the_probe()


def probe_column_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'users'"
                            " AND column_name = 'probe_note'").fetchone() is not None


def test_no_get_waits_longer_than_lock_timeout_and_the_migration_applies_once_the_idle_session_ends(
    service: tuple[str, GunicornServer],
) -> None:
    url, server = service
    # Four attempts wait at least 4 x 0.5 s in all: the last starts after the idle session ended.
    run = lock_probe(url, server.port, ProbeTiming(LOCK_TIMEOUT, attempts=4, idle_seconds=1.2, before=0.5, after=0.3,
                                                   users=USERS))
    assert run.applied == [PROBE_FILE], run.summary()
    assert run.migration_ended >= run.idle_ended and probe_column_exists(url)
    assert len(run.during) > 10 and run.failed() == [], run.summary()
    assert run.max_latency < BOUND, run.summary()


def test_a_migration_that_never_gets_its_lock_fails_naming_users_and_the_idle_session_and_stalls_no_get(
    service: tuple[str, GunicornServer],
) -> None:
    url, server = service
    run = lock_probe(url, server.port, ProbeTiming(LOCK_TIMEOUT, attempts=2, idle_seconds=5, before=0.5, after=0.3,
                                                   users=USERS))
    assert run.error is not None and run.error_names_the_lock(), (run.summary(), run.error and run.error.fields)
    assert not probe_column_exists(url)
    assert run.failed() == [] and run.max_latency < BOUND, run.summary()


def test_without_a_short_lock_timeout_every_get_stalls_as_long_as_the_idle_transaction(
    service: tuple[str, GunicornServer],
) -> None:
    url, server = service
    # The runner before issue 19: one attempt that waits as long as it takes.
    run = lock_probe(url, server.port, ProbeTiming(30, attempts=1, idle_seconds=2.0, before=0.5, after=0.3,
                                                   users=USERS))
    assert run.applied == [PROBE_FILE]
    assert run.max_latency > 1.5, run.summary()
