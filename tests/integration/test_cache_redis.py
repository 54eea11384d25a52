"""RedisUserCache on a real redis-server of the test's own: a miss whenever Redis is unwell, never an error;
and evictions that run only after the writing transaction has committed.

Each test starts its own redis-server on a free port, so it can kill or pause it without
disturbing anything else; the fixture always kills it afterwards.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from flask import Flask

from tests.redis_server import RedisServer
from webapp.cache import RedisUserCache, redis_client
from webapp.db import CommitFailed, Database
from webapp.models import User
from webapp.resilience import CLOSED, OPEN, CircuitBreaker
from webapp.transaction import RequestTransaction

SOCKET_TIMEOUT = 0.2  # long enough to measure against, short enough to keep the tests quick
THRESHOLD = 3
ANN = User(1, "Ann", "ann@example.org", datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def make_cache(server: RedisServer, reset_after: float = 60.0) -> tuple[RedisUserCache, CircuitBreaker, list[str]]:
    """The cache exactly as create_app wires it, plus the list of breaker states it moved to."""
    moves: list[str] = []
    breaker = CircuitBreaker(
        "redis",
        threshold=THRESHOLD,
        reset_after=reset_after,
        is_failure=lambda exc: isinstance(exc, RedisUserCache.unhealthy_errors),
        on_transition=lambda _name, _old, new: moves.append(new),
    )
    return RedisUserCache(redis_client(server.url, SOCKET_TIMEOUT), breaker, ttl=300), breaker, moves


def timed(fn, *args):
    started = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - started


def test_a_user_round_trips_through_redis_with_its_ttl(server: RedisServer):
    cache, _, _ = make_cache(server)
    assert cache.get(1) is None
    cache.put(ANN)
    assert cache.get(1) == ANN
    assert 0 < server.admin().ttl("user:1") <= 300


def test_invalidate_drops_the_cached_user(server: RedisServer):
    cache, _, _ = make_cache(server)
    cache.put(ANN)
    cache.invalidate(1)
    assert server.admin().exists("user:1") == 0
    assert cache.get(1) is None


def test_a_flushed_or_unreadable_entry_is_a_miss_and_does_not_count_against_redis(server: RedisServer):
    cache, breaker, _ = make_cache(server)
    cache.put(ANN)
    server.admin().flushall()
    server.admin().set("user:2", b"\xff not json")
    server.admin().set("user:3", '{"id": 3}')  # e.g. written by an older release
    for _ in range(THRESHOLD + 1):
        assert cache.get(1) is None and cache.get(2) is None and cache.get(3) is None
    assert breaker.state == CLOSED  # misses are answers, not failures


def test_redis_refusing_writes_is_a_miss_not_an_error_and_does_not_open_the_breaker(server: RedisServer):
    # maxmemory of 1 byte with the default noeviction policy: every SET answers -OOM.
    server.admin().config_set("maxmemory", "1")
    cache, breaker, _ = make_cache(server)
    for _ in range(THRESHOLD + 1):
        cache.put(ANN)  # must not raise: a cache that raises would turn into a 500
    assert cache.get(1) is None
    assert breaker.state == CLOSED  # Redis answered; it is full, not down


def test_a_killed_redis_is_a_quick_miss_and_opens_the_breaker_after_threshold_failures(server: RedisServer):
    cache, breaker, moves = make_cache(server)
    cache.put(ANN)
    server.stop()
    for _ in range(THRESHOLD):
        user, seconds = timed(cache.get, 1)
        assert user is None
        assert seconds < SOCKET_TIMEOUT + 0.1  # refused or timed out, never hung
    assert breaker.state == OPEN
    assert moves == [OPEN]  # the transition is announced once


def test_a_paused_redis_costs_at_most_the_socket_timeout_and_nothing_once_the_breaker_is_open(server: RedisServer):
    cache, breaker, _ = make_cache(server)
    cache.put(ANN)
    # Redis accepts connections but answers nothing. Long enough for the calls below; the
    # unpause in `finally` is itself held back until the pause ends (Redis pauses it too).
    server.admin().client_pause(1000, all=True)
    try:
        slow = [timed(cache.get, 1) for _ in range(THRESHOLD)]
        assert breaker.state == OPEN
        fast = [timed(cache.get, 1) for _ in range(20)]
    finally:
        server.admin().client_unpause()
    # Before the breaker opened each call waited for its socket timeout, and no longer.
    assert all(user is None and SOCKET_TIMEOUT * 0.9 <= s < SOCKET_TIMEOUT + 0.15 for user, s in slow), slow
    # Once open, a call does not touch Redis at all, so it cannot have waited a socket timeout.
    assert all(user is None and s < SOCKET_TIMEOUT / 2 for user, s in fast), fast
    assert sum(s for _, s in fast) < SOCKET_TIMEOUT  # twenty calls cost less than one wait


def test_the_breaker_lets_one_trial_through_after_reset_after_and_closes_once_redis_is_back(server: RedisServer):
    cache, breaker, moves = make_cache(server, reset_after=0.3)
    server.stop()
    for _ in range(THRESHOLD):
        cache.get(1)
    assert breaker.state == OPEN
    server.start()  # same port: the client's pooled sockets are now stale
    cache.put(ANN)  # still inside reset_after: refused without trying
    assert server.admin().exists("user:1") == 0
    time.sleep(0.35)
    assert cache.get(1) is None  # the trial call: a real miss on the fresh server
    assert breaker.state == CLOSED
    assert moves == ["open", "half_open", "closed"]
    cache.put(ANN)
    assert cache.get(1) == ANN


def test_in_half_open_only_one_caller_waits_on_a_still_paused_redis(server: RedisServer):
    cache, breaker, _ = make_cache(server, reset_after=0.2)
    server.admin().client_pause(1500, all=True)
    try:
        for _ in range(THRESHOLD):
            cache.get(1)
        assert breaker.state == OPEN
        time.sleep(0.25)  # cool-off over: the next caller becomes the single trial
        durations: list[float] = []
        start = threading.Barrier(8)

        def caller() -> None:
            start.wait()
            durations.append(timed(cache.get, 1)[1])

        threads = [threading.Thread(target=caller) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.admin().client_unpause()
    waited = [s for s in durations if s >= SOCKET_TIMEOUT * 0.9]
    assert len(waited) == 1, durations  # the trial; the seven others failed fast
    assert breaker.state == OPEN  # the trial timed out, so the circuit opened again


@pytest.fixture
def transaction(database_url: str, db) -> Iterator[RequestTransaction]:
    """A RequestTransaction on its own small pool, used inside a bare Flask request context."""
    database = Database(database_url, min_size=0, max_size=1, timeout=2)
    database.open()
    yield RequestTransaction(database, default_timeout=5)
    database.close()


def count_users(db) -> int:
    return db.execute("SELECT count(*) FROM users").fetchone()[0]


def test_an_eviction_registered_in_a_transaction_runs_only_once_it_has_committed(server, transaction, db):
    cache, _, _ = make_cache(server)
    cache.put(ANN)
    users_seen_by_others: list[int] = []

    def evict() -> None:
        users_seen_by_others.append(count_users(db))  # another connection: sees only committed rows
        cache.invalidate(1)

    with Flask(__name__).test_request_context(method="POST"):  # GET would be READ ONLY
        transaction.connection().execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
        transaction.after_commit(evict)
        assert server.admin().exists("user:1") == 1  # registering does not run it
        transaction.finish(commit=True)
    assert users_seen_by_others == [1]  # it ran after COMMIT, not before
    assert server.admin().exists("user:1") == 0


@pytest.mark.parametrize("finish", ["rollback", "restart", "failed commit"])
def test_an_eviction_never_runs_when_the_transaction_does_not_commit(server, transaction, db, finish):
    cache, _, _ = make_cache(server)
    cache.put(ANN)
    with Flask(__name__).test_request_context(method="POST"):  # GET would be READ ONLY
        conn = transaction.connection()
        conn.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
        transaction.after_commit(lambda: cache.invalidate(1))
        if finish == "rollback":
            transaction.finish(commit=False)
        elif finish == "restart":
            transaction.restart()  # a whole-transaction retry: the next attempt registers again
            transaction.finish(commit=True)
        else:
            with contextlib.suppress(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")  # aborts the transaction: COMMIT cannot succeed
            with pytest.raises(CommitFailed):
                transaction.finish(commit=True)
    assert server.admin().exists("user:1") == 1
    assert count_users(db) == 0
