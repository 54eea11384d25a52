"""Database.transaction: explicit commit, rollback otherwise, the deadline as SET LOCAL statement_timeout,
no session state left behind, and a silent server cut off by the watchdog and kept out by the breaker."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest

from tests.polling import wait_until
from tests.stopped_process import stopped
from webapp.domain.errors import CommitFailed, DeadlineExceeded, Unavailable
from webapp.postgres.database import Database, database_breaker
from webapp.postgres.unit_of_work import Transaction
from webapp.resilience import CLOSED, HALF_OPEN, OPEN, Deadline

INSERT_ANN = "INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')"


@pytest.fixture
def database(database_url: str, db) -> Iterator[Database]:
    with Database(database_url, min_size=1, max_size=2, timeout=2) as database:
        # Until its first connection is up, a checkout makes the pool grow a second one in the
        # background, and a test counting idle connections would race it.
        database.pool.wait(timeout=5)
        yield database


@pytest.fixture
def one_connection(database_url: str, db) -> Iterator[Database]:
    """A pool of exactly one connection: every transaction runs on the same server session."""
    with Database(database_url, min_size=1, max_size=1, timeout=2) as database:
        database.pool.wait(timeout=5)
        yield database


def one_row(tx: Transaction, query: LiteralString) -> tuple[Any, ...]:
    """The single row the query returns."""
    row = tx.execute(query).fetchone()
    assert row is not None
    return row


def count_users(db: psycopg.Connection) -> int:
    row = db.execute("SELECT count(*) FROM users").fetchone()
    return row[0] if row else -1


def app_sessions(db: psycopg.Connection) -> list[tuple[int, str]]:
    """(pid, state) of the app's server sessions on the test database."""
    return db.execute(
        "SELECT pid, state FROM pg_stat_activity WHERE application_name = 'webapp' AND datname = current_database()"
    ).fetchall()


def test_a_transaction_commits_only_when_told_to(database: Database, db):
    with Transaction(database, Deadline(5)) as tx:
        tx.execute(INSERT_ANN)
        tx.commit()
    assert count_users(db) == 1


def test_leaving_the_block_without_commit_rolls_back(database: Database, db):
    with Transaction(database, Deadline(5)) as tx:
        tx.execute(INSERT_ANN)  # a service that forgets tx.commit() writes nothing
    assert count_users(db) == 0


def test_an_exception_rolls_back_everything_and_propagates(database: Database, db):
    with pytest.raises(RuntimeError), Transaction(database, Deadline(5)) as tx:
        tx.execute(INSERT_ANN)
        raise RuntimeError("boom")
    assert count_users(db) == 0


def test_a_commit_after_a_failed_statement_raises_instead_of_silently_rolling_back(database: Database, db):
    # Postgres answers COMMIT with "ROLLBACK" (no error) once a statement failed.
    with pytest.raises(CommitFailed), Transaction(database, Deadline(5)) as tx:
        tx.execute(INSERT_ANN)
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            tx.execute("SELECT 1/0")  # a careless caller swallows the error and carries on
        tx.commit()
    assert count_users(db) == 0


def test_a_commit_rejected_by_the_server_raises_commit_failed(database: Database, db):
    db.execute("CREATE TABLE IF NOT EXISTS deferred_check (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    db.execute("TRUNCATE deferred_check")
    try:
        with pytest.raises(CommitFailed), Transaction(database, Deadline(5)) as tx:
            tx.execute("INSERT INTO deferred_check VALUES (1), (1)")  # checked only at COMMIT
            tx.commit()
        assert db.execute("SELECT count(*) FROM deferred_check").fetchone() == (0,)
    finally:
        db.execute("DROP TABLE deferred_check")


def test_the_deadline_becomes_the_statement_timeout(database: Database):
    with Transaction(database, Deadline(1.5)) as tx:
        row = tx.execute("SELECT current_setting('statement_timeout')").fetchone()
    assert row is not None
    assert row[0].endswith("ms") and 1000 < int(row[0][:-2]) <= 1500


def test_no_session_state_outlives_a_transaction_on_its_pooled_connection(one_connection: Database, db):
    # Behind a transaction-mode pooler the next client of this server session could be anyone:
    # the deadline's statement_timeout must end with the transaction (SET LOCAL), not stay.
    server_default = db.execute("SHOW statement_timeout").fetchone()[0]  # a fresh session's value
    with Transaction(one_connection, Deadline(1.5)) as tx:
        pid, inside = one_row(tx, "SELECT pg_backend_pid(), current_setting('statement_timeout')")
        tx.commit()
    assert inside != server_default
    with one_connection.pool.connection(timeout=2) as conn:  # the same session, outside any transaction
        after = conn.execute("SELECT pg_backend_pid(), current_setting('statement_timeout')").fetchone()
        set_in_session = conn.execute("SELECT name FROM pg_settings WHERE source = 'session'").fetchall()
    assert after == (pid, server_default)
    assert set_in_session == []  # nothing SET for the session at all


def prepared_on_the_server(database: Database) -> int:
    """Run one statement 10 times in a transaction, then count the server's prepared statements."""
    with Transaction(database, Deadline(5), read_only=True) as tx:
        for _ in range(10):  # psycopg prepares after 5 runs when its threshold is on
            tx.execute("SELECT %s::int + 1", (1,))
        row = tx.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert row is not None
    return int(row[0])


def test_a_connection_straight_to_postgres_prepares_statements_by_default(database_url: str, db):
    # DB_PREPARED_STATEMENTS=auto: this connection's server process is the one libpq was told of.
    with Database(database_url, min_size=1, max_size=1, timeout=2) as database:
        database.pool.wait(timeout=5)
        assert database.direct is True
        assert prepared_on_the_server(database) >= 1


def test_prepared_statements_turned_off_never_prepare_on_the_server(database_url: str, db):
    # A prepared statement lives in the server session: through PgBouncer < 1.21 in transaction
    # mode the next execution may land on a session that never saw it.
    with Database(database_url, min_size=1, max_size=1, timeout=2, prepared_statements=False) as database:
        assert prepared_on_the_server(database) == 0
        with database.pool.connection(timeout=2) as conn:
            assert conn.prepare_threshold is None
        assert database.direct is None  # no detection was asked for


def test_a_statement_past_the_deadline_is_cancelled_and_the_connection_comes_back_clean(database: Database, db):
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded), Transaction(database, Deadline(0.2)) as tx:
        tx.execute("SELECT pg_sleep(2)")  # QueryCanceled, translated by tx.execute itself
    assert time.monotonic() - started < 0.2 + GRACE  # Postgres cancelled it, before the watchdog's grace
    with Transaction(database, Deadline(5)) as tx:
        assert tx.execute("SELECT 1").fetchone() == (1,)
    states = {state for _, state in app_sessions(db)}
    assert "idle in transaction" not in states and "idle in transaction (aborted)" not in states
    assert database.breaker.state == CLOSED  # a slow query is an answer, not a dead database


def test_a_transaction_that_runs_no_statement_takes_no_connection(database: Database):
    before = database.pool.get_stats().get("requests_num", 0)
    with Transaction(database, Deadline(5)) as tx:
        tx.commit()  # a cache hit: nothing to run, nothing to commit
    assert database.pool.get_stats().get("requests_num", 0) == before


def test_an_expired_deadline_never_reaches_the_database(database: Database):
    deadline = Deadline(0.0001)
    time.sleep(0.01)
    before = database.pool.get_stats().get("requests_num", 0)
    with pytest.raises(DeadlineExceeded), Transaction(database, deadline) as tx:
        tx.execute("SELECT 1")
    assert database.pool.get_stats().get("requests_num", 0) == before  # no checkout was attempted


def test_an_unreachable_database_is_unavailable_within_the_checkout_timeout():
    database = Database("postgresql://postgres@127.0.0.1:1/none", min_size=0, max_size=1, timeout=0.5)
    database.open()
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable), Transaction(database, Deadline(5)) as tx:
            tx.execute("SELECT 1")
    finally:
        database.close(timeout=1)
    assert time.monotonic() - started < 2


def test_connections_return_to_the_pool_idle_after_commit_and_rollback(database: Database, db):
    with Transaction(database, Deadline(5)) as tx:
        tx.execute("SELECT 1")
        tx.commit()
    with pytest.raises(ValueError), Transaction(database, Deadline(5)) as tx:
        tx.execute("SELECT 1")
        raise ValueError
    states = [state for _, state in app_sessions(db)]
    assert states and all(state == "idle" for state in states)
    assert database.stats()["available"] == database.stats()["size"]


def test_a_connection_lost_under_commit_is_unavailable_not_a_500(database: Database, db):
    with pytest.raises(Unavailable), Transaction(database, Deadline(5)) as tx:
        tx.execute(INSERT_ANN)
        pid = one_row(tx, "SELECT pg_backend_pid()")[0]
        # Another session kills ours, as a Postgres restart would, just before COMMIT.
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        tx.commit()
    assert count_users(db) == 0


def test_a_pooled_connection_that_died_is_replaced_before_the_transaction_starts(database: Database, db):
    with Transaction(database, Deadline(5)) as tx:
        dead_pid = one_row(tx, "SELECT pg_backend_pid()")[0]
    # As a Postgres restart would: the pool still holds the connection, its server is gone.
    db.execute("SELECT pg_terminate_backend(%s)", (dead_pid,))
    with Transaction(database, Deadline(5)) as tx:
        pid, timeout = one_row(tx, "SELECT pg_backend_pid(), current_setting('statement_timeout')")
    assert pid != dead_pid
    assert timeout != "0"  # BEGIN; SET LOCAL ran on the fresh connection: the transaction is whole
    assert database.breaker.state == CLOSED  # the retry on a fresh connection answered


def test_a_read_only_transaction_refuses_writes(database: Database, db):
    with Transaction(database, Deadline(5), read_only=True) as tx:
        assert tx.execute("SELECT count(*) FROM users").fetchone() == (0,)
        tx.commit()
    refused = pytest.raises(psycopg.errors.ReadOnlySqlTransaction)
    with refused, Transaction(database, Deadline(5), read_only=True) as tx:
        tx.execute(INSERT_ANN)
    assert count_users(db) == 0
    # The connection came back idle and read-write: the next transaction may write.
    with Transaction(database, Deadline(5)) as tx:
        tx.execute(INSERT_ANN)
        tx.commit()
    assert count_users(db) == 1


# A silent server: its backend process is stopped (SIGSTOP), so it neither answers nor enforces
# statement_timeout, like a frozen VM or a paused pooler. Only the watchdog can end the wait.

SILENT_DEADLINE = 0.5
# The specification, written here and not imported from webapp/postgres/watchdog.py: past its deadline,
# a silent server gets half a second to answer before its connection is cut. A test that read the
# module's own constant would pass whatever that constant became (30 s included).
GRACE = 0.5
SLACK = 0.5  # thread wake-up and socket shutdown on a loaded machine
LONGEST_SILENCE = SILENT_DEADLINE + GRACE + 2  # a broken watchdog: the server answers late and the timing fails


@contextlib.contextmanager
def silenced(backend: tuple[Any, ...], at_most: float = LONGEST_SILENCE) -> Iterator[None]:
    """Stop the backend (pid, client port) for the block, and never for longer than at_most seconds.

    at_most bounds the test when the watchdog is broken: the server answers late, the timing fails.
    The backend is resumed even if this process dies (tests/stopped_process.py).
    """
    pid, port = backend
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        pytest.skip("Postgres does not run on this host: cannot stop its backend")
    # Never signal anything but the backend of our own connection (same host, same client port).
    if comm != "postgres" or (port is not None and f"({port})" not in cmdline):
        pytest.skip(f"pid {pid} is not this connection's Postgres backend on this host")
    with contextlib.ExitStack() as resume:
        try:
            resume.enter_context(stopped(pid, at_most))
        except PermissionError:
            pytest.skip("not allowed to stop the Postgres backend (run the tests as root or as postgres)")
        yield


BACKEND = "SELECT pg_backend_pid(), inet_client_port()"
WHERE = ["mid-transaction", "at BEGIN"]


def cut_off(database: Database, where: str) -> tuple[int, float]:
    """Silence the server of the pool's only connection, mid-transaction or before its BEGIN.

    Returns the backend's pid and the seconds from the start of the transaction's deadline until
    DeadlineExceeded came out of it.
    """
    if where == "at BEGIN":
        with Transaction(database, Deadline(5)) as tx:
            backend = one_row(tx, BACKEND)  # the connection goes back to the pool, idle
    with contextlib.ExitStack() as resume_afterwards:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded), Transaction(database, Deadline(SILENT_DEADLINE)) as tx:
            if where == "mid-transaction":
                backend = one_row(tx, BACKEND)
            resume_afterwards.enter_context(silenced(backend))
            tx.execute("SELECT 1")  # at BEGIN: the BEGIN this statement needs first is what waits
        elapsed = time.monotonic() - started
    return backend[0], elapsed


def wait_until_gone(db: psycopg.Connection, pid: int) -> None:
    assert wait_until(lambda: pid not in {p for p, _ in app_sessions(db)}), f"backend {pid} still connected"


@pytest.mark.parametrize("where", WHERE)
def test_a_silent_server_is_cut_off_at_the_deadline_and_its_connection_is_never_reused(
    database_url: str, db, where: str
):
    # reset_after=0: the breaker lets the very next call through, so this test sees only the pool.
    database = Database(database_url, min_size=1, max_size=1, timeout=2, breaker=database_breaker(reset_after=0))
    database.open()
    database.pool.wait(timeout=5)
    try:
        pid, elapsed = cut_off(database, where)
        # Not before deadline + grace (Postgres gets its chance to answer first), and not much after.
        assert SILENT_DEADLINE + GRACE * 0.8 <= elapsed < SILENT_DEADLINE + GRACE + SLACK
        assert database.pool.get_stats().get("returns_bad", 0) == 1  # the pool discarded it
        with Transaction(database, Deadline(5)) as tx:
            assert one_row(tx, "SELECT pg_backend_pid()")[0] != pid
        wait_until_gone(db, pid)  # resumed, the backend finds its client gone and exits
    finally:
        database.close()


@pytest.mark.parametrize("where", WHERE)
def test_a_silent_server_opens_the_breaker_until_reset_after_then_a_trial_closes_it(
    database_url: str, db, where: str
):
    moves: list[str] = []
    reset_after = 0.5
    database = Database(
        database_url, min_size=1, max_size=1, timeout=2,
        breaker=database_breaker(reset_after=reset_after, on_transition=lambda _n, _old, new: moves.append(new)),
    )
    database.open()
    database.pool.wait(timeout=5)
    try:
        cut_off(database, where)
        cut_at = time.monotonic()
        assert database.breaker.state == OPEN
        # Open: the next request fails at once instead of waiting out its deadline on a dead server.
        with pytest.raises(Unavailable), Transaction(database, Deadline(5)) as tx:
            tx.execute("SELECT 1")
        assert time.monotonic() - cut_at < 0.1 < database.checkout_timeout
        # After reset_after the first request is the trial; the server answers, so the circuit closes.
        while True:
            try:
                with Transaction(database, Deadline(5)) as tx:
                    assert tx.execute("SELECT 1").fetchone() == (1,)
                break
            except Unavailable:
                assert time.monotonic() - cut_at < reset_after + 2, "the breaker never let a trial through"
                time.sleep(0.02)
        assert time.monotonic() - cut_at >= reset_after * 0.9
        assert database.breaker.state == CLOSED
        assert moves == [OPEN, HALF_OPEN, CLOSED]
    finally:
        database.close()


def test_a_trial_that_cannot_get_a_connection_keeps_the_breaker_open_while_a_busy_pool_never_opens_it():
    # Port 1: nothing listens, so the pool never has a connection to hand out (as while Postgres is down).
    breaker = database_breaker(reset_after=0.2)
    unreachable = Database("postgresql://postgres@127.0.0.1:1/nowhere", min_size=0, max_size=1, timeout=0.2,
                           breaker=breaker)
    unreachable.open()
    try:
        with pytest.raises(Unavailable), Transaction(unreachable, Deadline(5)) as tx:
            tx.execute("SELECT 1")
        assert breaker.state == CLOSED  # closed: a checkout that timed out may just be load
        breaker.record_failure()  # as the watchdog does when it cuts a silent connection
        time.sleep(0.25)
        with pytest.raises(Unavailable), Transaction(unreachable, Deadline(5)) as tx:
            tx.execute("SELECT 1")  # the trial: still no connection within DB_POOL_TIMEOUT
        assert breaker.state == OPEN
    finally:
        unreachable.close(timeout=1)


def test_a_statement_after_commit_is_refused_instead_of_running_outside_the_transaction(database: Database, db):
    with Transaction(database, Deadline(5)) as tx:
        tx.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
        tx.commit()
        with pytest.raises(RuntimeError, match="after commit"):
            tx.execute("INSERT INTO users (name, email) VALUES ('Bob', 'bob@example.org')")
    assert db.execute("SELECT count(*) FROM users").fetchone() == (1,)
