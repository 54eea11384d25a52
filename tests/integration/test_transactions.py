"""Database.transaction: commit, rollback, a deadline as statement_timeout, and clean connections."""

from __future__ import annotations

import contextlib
import time

import psycopg
import pytest

from webapp.db import CommitFailed, Database
from webapp.errors import DeadlineExceeded, Unavailable
from webapp.resilience import Deadline


@pytest.fixture
def database(database_url: str, db):
    database = Database(database_url, min_size=1, max_size=2, timeout=2)
    database.open()
    # Until its first connection is up, a checkout makes the pool grow a second one in the
    # background, and a test counting idle connections would race it.
    database.pool.wait(timeout=5)
    yield database
    database.close()


def count_users(db: psycopg.Connection) -> int:
    row = db.execute("SELECT count(*) FROM users").fetchone()
    return row[0] if row else -1


def test_a_transaction_commits_on_success(database: Database, db):
    with database.transaction(Deadline(5)) as conn:
        conn.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
    assert count_users(db) == 1


def test_an_exception_rolls_back_everything_and_propagates(database: Database, db):
    with pytest.raises(RuntimeError), database.transaction(Deadline(5)) as conn:
        conn.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
        raise RuntimeError("boom")
    assert count_users(db) == 0


def test_a_commit_after_a_failed_statement_raises_instead_of_silently_rolling_back(database: Database, db):
    # Postgres answers COMMIT with "ROLLBACK" (no error) once a statement failed.
    with pytest.raises(CommitFailed), database.transaction(Deadline(5)) as conn:
        conn.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")  # a careless caller swallows the error and carries on
    assert count_users(db) == 0


def test_a_commit_rejected_by_the_server_raises_commit_failed(database: Database, db):
    db.execute("CREATE TABLE IF NOT EXISTS deferred_check (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    db.execute("TRUNCATE deferred_check")
    try:
        with pytest.raises(CommitFailed), database.transaction(Deadline(5)) as conn:
            conn.execute("INSERT INTO deferred_check VALUES (1), (1)")  # checked only at COMMIT
        assert db.execute("SELECT count(*) FROM deferred_check").fetchone() == (0,)
    finally:
        db.execute("DROP TABLE deferred_check")


def test_the_deadline_becomes_the_statement_timeout(database: Database):
    with database.transaction(Deadline(1.5)) as conn:
        row = conn.execute("SELECT current_setting('statement_timeout')").fetchone()
    assert row is not None
    assert row[0].endswith("ms") and 1000 < int(row[0][:-2]) <= 1500


def test_a_statement_past_the_deadline_is_cancelled_and_the_connection_comes_back_clean(database: Database, db):
    from webapp.db import translated_errors

    with pytest.raises(DeadlineExceeded), database.transaction(Deadline(0.2)) as conn, translated_errors():
        conn.execute("SELECT pg_sleep(2)")
    with database.transaction(Deadline(5)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    states = db.execute(
        "SELECT state FROM pg_stat_activity WHERE application_name = 'webapp' AND datname = current_database()"
    ).fetchall()
    assert ("idle in transaction",) not in states and ("idle in transaction (aborted)",) not in states


def test_an_expired_deadline_never_reaches_the_database(database: Database):
    deadline = Deadline(0.0001)
    time.sleep(0.01)
    before = database.pool.get_stats().get("requests_num", 0)
    with pytest.raises(DeadlineExceeded), database.transaction(deadline):
        pass
    assert database.pool.get_stats().get("requests_num", 0) == before  # no checkout was attempted


def test_an_unreachable_database_is_unavailable_within_the_checkout_timeout():
    import time as clock

    database = Database("postgresql://postgres@127.0.0.1:1/none", min_size=0, max_size=1, timeout=0.5)
    database.open()
    started = clock.monotonic()
    try:
        with pytest.raises(Unavailable), database.transaction(Deadline(5)):
            pass
    finally:
        database.close(timeout=1)
    assert clock.monotonic() - started < 2


def test_connections_return_to_the_pool_idle_after_commit_and_rollback(database: Database, db):
    with database.transaction(Deadline(5)) as conn:
        conn.execute("SELECT 1")
    with pytest.raises(ValueError), database.transaction(Deadline(5)) as conn:
        conn.execute("SELECT 1")
        raise ValueError
    states = db.execute(
        "SELECT state FROM pg_stat_activity WHERE application_name = 'webapp' AND datname = current_database()"
    ).fetchall()
    assert states and all(state == ("idle",) for state in states)
    assert database.stats()["available"] == database.stats()["size"]


def test_a_connection_lost_under_commit_is_unavailable_not_a_500(database: Database, db):
    with pytest.raises(Unavailable), database.transaction(Deadline(5)) as conn:
        conn.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
        # Another session kills ours, as a Postgres restart would, just before COMMIT.
        db.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
    assert count_users(db) == 0



def test_a_pooled_connection_that_died_is_replaced_before_the_transaction_starts(database: Database, db):
    dead = database.begin(Deadline(5))
    dead_pid = dead.info.backend_pid
    database.end(dead, commit=True)
    # As a Postgres restart would: the pool still holds the connection, its server is gone.
    db.execute("SELECT pg_terminate_backend(%s)", (dead_pid,))
    conn = database.begin(Deadline(5))
    try:
        assert conn.info.backend_pid != dead_pid
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    finally:
        database.end(conn, commit=True)


def test_a_read_only_transaction_refuses_writes_and_commits_its_reads(database: Database, db):
    with database.transaction(Deadline(5), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
    refused = pytest.raises(psycopg.errors.ReadOnlySqlTransaction)
    with refused, database.transaction(Deadline(5), read_only=True) as conn:
        conn.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
    assert count_users(db) == 0
    # The connection came back idle and read-write: the next transaction may write.
    with database.transaction(Deadline(5)) as conn:
        conn.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
    assert count_users(db) == 1
