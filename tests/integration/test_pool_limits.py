"""Database checkout is bounded in time AND in queue length: an exhausted pool makes at most
max_waiting callers wait, each at most the checkout timeout (or less, if its deadline is nearer);
everyone else is refused at once. Nothing piles up, and the pool recovers when connections return."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from webapp.domain.errors import Unavailable
from webapp.postgres.database import Database
from webapp.postgres.unit_of_work import Transaction
from webapp.resilience import CLOSED, Deadline

CHECKOUT_TIMEOUT = 0.5
# Its own application_name: other tests (PgBouncer's pooled server connections) may hold ones named "webapp".
POOL_NAME = "webapp-pool-limits"
MARGIN = 0.3  # thread start-up and scheduling on a busy 2-core machine


@pytest.fixture
def database(database_url: str, db) -> Iterator[Database]:
    with Database(database_url, min_size=2, max_size=2, timeout=CHECKOUT_TIMEOUT, max_waiting=1,
                  name=POOL_NAME) as database:
        database.pool.wait(timeout=5)
        yield database


@pytest.fixture
def exhausted(database: Database) -> Iterator[list[Transaction]]:
    """Both connections checked out, each inside an open transaction (a slow request's)."""
    with ExitStack() as stack:
        held = [stack.enter_context(Transaction(database, Deadline(30))) for _ in range(2)]
        for tx in held:
            tx.execute("SELECT 1")  # the first statement takes the connection
        yield held  # a test may end some of them early (it pops them off the list and closes them)


def checkout(database: Database, deadline: Deadline) -> tuple[str, float]:
    """Try to run a transaction's first statement; return the outcome and how long it took."""
    started = time.monotonic()
    try:
        with Transaction(database, deadline) as tx:
            tx.execute("SELECT 1")
    except Unavailable:
        return "unavailable", time.monotonic() - started
    return "ok", time.monotonic() - started


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    return thread, result


def wait_for_waiters(database: Database, n: int) -> None:
    deadline = time.monotonic() + 2
    while database.pool.get_stats().get("requests_waiting", 0) < n:
        assert time.monotonic() < deadline, "no caller queued for a connection"
        time.sleep(0.005)


def test_one_caller_queues_for_at_most_the_timeout_and_the_next_is_refused_at_once(database: Database, exhausted):
    waiter, waited = in_thread(checkout, database, Deadline(10))
    wait_for_waiters(database, 1)  # the queue (max_waiting=1) is now full
    refused = checkout(database, Deadline(10))
    waiter.join()
    assert refused[0] == "unavailable" and refused[1] < 0.1  # TooManyRequests: no wait at all
    assert waited[0][0] == "unavailable"
    assert CHECKOUT_TIMEOUT * 0.9 <= waited[0][1] < CHECKOUT_TIMEOUT + MARGIN  # PoolTimeout: bounded


def test_a_nearer_request_deadline_cuts_the_checkout_wait_short(database: Database, exhausted):
    outcome, seconds = checkout(database, Deadline(0.15))
    assert outcome == "unavailable"
    assert seconds < 0.15 + MARGIN / 2 < CHECKOUT_TIMEOUT


def test_a_flood_on_an_exhausted_pool_is_refused_quickly_and_never_opens_more_connections(
    database: Database, exhausted, db
):
    start = threading.Barrier(12)
    results: list[tuple[str, float]] = []

    def caller() -> None:
        start.wait()
        results.append(checkout(database, Deadline(10)))

    threads = [threading.Thread(target=caller) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [outcome for outcome, _ in results] == ["unavailable"] * 12
    assert all(seconds < CHECKOUT_TIMEOUT + MARGIN for _, seconds in results), results
    assert sum(seconds >= CHECKOUT_TIMEOUT * 0.9 for _, seconds in results) <= 1, results  # only the one queued
    connections = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
        (POOL_NAME,),
    ).fetchone()
    assert connections == (2,)  # max_size holds under pressure
    assert database.breaker.state == CLOSED  # a busy pool is not a dead database: nothing fails fast later


def test_a_queued_caller_gets_the_first_connection_returned_and_the_pool_recovers(database: Database, exhausted, db):
    waiter, waited = in_thread(checkout, database, Deadline(10))
    wait_for_waiters(database, 1)
    exhausted.pop().close()  # a slow request finishes: its connection goes back to the pool
    waiter.join()
    assert waited[0][0] == "ok" and waited[0][1] < CHECKOUT_TIMEOUT
    exhausted.pop().close()
    assert [checkout(database, Deadline(5))[0] for _ in range(10)] == ["ok"] * 10
    stats = database.stats()
    assert stats["available"] == stats["size"] == 2 and stats["waiting"] == 0
    states = db.execute(
        "SELECT state FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
        (POOL_NAME,),
    ).fetchall()
    assert states == [("idle",), ("idle",)]
