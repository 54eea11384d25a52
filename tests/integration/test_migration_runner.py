"""`webapp migrate` never stalls traffic: a short lock_timeout, retries with jitter, then a clear failure;
files that run outside a transaction; checksums; one run at a time through a lease that expires."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import scratch_database
from webapp.postgres.migrations import MigrationError, migrate

FAST_LOCK_TIMEOUT, FAST_ATTEMPTS = 0.2, 2


@pytest.fixture
def database(server_url: str) -> Iterator[str]:
    with scratch_database(server_url, "webapp_runner", migrated=False) as url:
        yield url


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text)


@pytest.fixture
def table_a(database: str, tmp_path: Path) -> Path:
    """A migrated table `a` with one row (the schema the next file changes)."""
    write(tmp_path, "0001_a.sql", "-- a\nCREATE TABLE a (id bigint PRIMARY KEY, v text);\n"
                                  "INSERT INTO a VALUES (1, 'x');\n")
    migrate(database, tmp_path)
    return tmp_path


def idle_in_transaction_reading_a(database: str) -> psycopg.Connection:
    """A session that read `a` and sits idle in its transaction (a report, a stuck client, an open psql)."""
    conn = psycopg.connect(database)
    conn.execute("SELECT * FROM a").fetchall()
    return conn


def test_an_alter_behind_an_idle_transaction_gives_up_after_the_lock_timeout_and_names_the_lock(
    database: str, table_a: Path
):
    write(table_a, "0002_alter.sql", "-- alter\nALTER TABLE a ADD COLUMN w text;\n")
    blocker = idle_in_transaction_reading_a(database)
    try:
        started = time.monotonic()
        with pytest.raises(MigrationError) as failed:
            migrate(database, table_a, lock_timeout=FAST_LOCK_TIMEOUT, attempts=FAST_ATTEMPTS)
        took = time.monotonic() - started
    finally:
        blocker.close()
    assert took < 0.2 * 2 + 0.5 + 1.0  # two waits of lock_timeout, one backoff (≤ 0.5 s), slack
    fields = failed.value.fields
    assert fields["migration"] == "0002_alter.sql" and fields["attempts"] == 2
    assert fields["statement"] == "ALTER TABLE a ADD COLUMN w text" and fields["tables"] == ["a"]
    assert [(h["table"], h["state"]) for h in fields["held_by"]] == [("a", "idle in transaction")]
    with psycopg.connect(database) as conn:  # nothing of it was applied
        assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'a'").fetchone() == (2,)
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == ("0001_a.sql",)


def test_reads_queued_behind_a_waiting_migration_wait_no_longer_than_its_lock_timeout(database: str, table_a: Path):
    write(table_a, "0002_alter.sql", "-- alter\nALTER TABLE a ADD COLUMN w text;\n")
    blocker = idle_in_transaction_reading_a(database)
    failures: list[BaseException] = []

    def run() -> None:
        try:
            migrate(database, table_a, lock_timeout=0.5, attempts=10)
        except MigrationError as exc:
            failures.append(exc)

    runner = threading.Thread(target=run)
    try:
        runner.start()
        time.sleep(0.2)  # the ALTER is waiting now: every new read of `a` queues behind it
        slowest = 0.0
        with psycopg.connect(database, autocommit=True) as reader:
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                began = time.monotonic()
                reader.execute("SELECT count(*) FROM a").fetchone()
                slowest = max(slowest, time.monotonic() - began)
    finally:
        blocker.close()
        runner.join(timeout=30)
    assert slowest < 0.5 + 0.3  # at most one lock_timeout, never the blocker's whole transaction
    assert not failures  # the blocker left during a backoff: a later attempt applied the file


def test_an_applied_file_that_was_edited_is_refused_not_skipped(database: str, table_a: Path):
    write(table_a, "0001_a.sql", (table_a / "0001_a.sql").read_text() + "ALTER TABLE a ADD COLUMN sneaky int;\n")
    write(table_a, "0002_b.sql", "-- b\nCREATE TABLE b (id int);\n")
    with pytest.raises(MigrationError, match="0001_a.sql was changed after it was applied"):
        migrate(database, table_a)
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT to_regclass('b')").fetchone() == (None,)  # refused before anything ran


def test_rows_applied_before_checksums_adopt_the_file_once(database: str, table_a: Path):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = NULL")
    assert migrate(database, table_a) == []
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT checksum IS NOT NULL FROM schema_migrations").fetchone() == (True,)


def test_a_no_transaction_file_builds_an_index_concurrently_and_rebuilds_an_invalid_leftover(
    database: str, table_a: Path
):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO a SELECT g, 'v' FROM generate_series(2, 50) g")
        conn.execute("INSERT INTO a VALUES (51, 'v')")
        # What a failed concurrent build leaves behind: a duplicate makes a unique build fail, INVALID.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY a_v_key ON a (v)")
        conn.execute("DELETE FROM a WHERE id > 1")
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'a_v_key'::regclass").fetchone() == (
            False,)
    write(table_a, "0002_index.sql", "-- index\n-- migrate: no-transaction\n"
                                    "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS a_v_key ON a (v);\n")
    assert migrate(database, table_a) == ["0002_index.sql"]
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'a_v_key'::regclass").fetchone() == (
            True,)


def test_a_batches_file_repeats_each_statement_until_it_touches_no_row(database: str, table_a: Path):
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO a SELECT g, NULL FROM generate_series(2, 2500) g")
    write(table_a, "0002_backfill.sql", "-- backfill\n-- migrate: no-transaction\n-- migrate: batches\n"
                                       "UPDATE a SET v = 'filled' WHERE id IN "
                                       "(SELECT id FROM a WHERE v IS NULL LIMIT 1000);\n")
    assert migrate(database, table_a) == ["0002_backfill.sql"]
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM a WHERE v IS NULL").fetchone() == (0,)


def test_a_lease_left_by_a_crashed_run_expires_and_a_live_one_is_waited_for(database: str, table_a: Path):
    write(table_a, "0002_b.sql", "-- b\nCREATE TABLE b (id int);\n")
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations_lease (holder, expires_at) "
                     "VALUES ('crashed', now() - interval '1s')")
    assert migrate(database, table_a) == ["0002_b.sql"]  # an expired lease is taken over at once
    write(table_a, "0003_c.sql", "-- c\nCREATE TABLE c (id int);\n")
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations_lease (holder, expires_at) VALUES ('live', now() + interval '1s')")
    started = time.monotonic()
    assert migrate(database, table_a) == ["0003_c.sql"]
    assert time.monotonic() - started >= 0.5  # it waited for the live lease to run out
    with pytest.raises(TimeoutError):
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute("INSERT INTO schema_migrations_lease (holder, expires_at) "
                         "VALUES ('live', now() + interval '1 minute')")
        migrate(database, table_a, lease_wait=0.5)


@pytest.mark.slow
def test_a_no_transaction_file_is_refused_through_a_transaction_pooler(pgbouncer, database_url: str, tmp_path: Path):
    from tests.pgbouncer_server import database_name

    write(tmp_path, "0001_index.sql", "-- index\n-- migrate: no-transaction\n"
                                      "CREATE INDEX CONCURRENTLY IF NOT EXISTS users_name_idx ON users (name);\n")
    with pytest.raises(MigrationError, match="needs a direct connection"):
        migrate(pgbouncer.url(database_name(database_url)), tmp_path)
