"""RedisUserCache on a real redis-server of the test's own: a miss whenever Redis is unwell, never an error;
wired by cache_from_config behind a breaker that only silence opens; and evictions that run only after
the writing transaction has committed.

Each test starts its own redis-server on a free port, so it can kill or pause it without
disturbing anything else; the fixture always kills it afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from tests.conftest import make_config
from tests.redis_server import RedisServer
from webapp.cache.users import UNHEALTHY, NoCache, RedisUserCache, cache_from_config, redis_client
from webapp.domain.errors import CommitFailed, EmailTaken
from webapp.domain.models import User
from webapp.postgres.database import Database
from webapp.postgres.unit_of_work import UnitOfWork
from webapp.resilience import CLOSED, OPEN, CircuitBreaker, Deadline
from webapp.services.ports import Check
from webapp.services.users import UserService

SOCKET_TIMEOUT = 0.2  # long enough to measure against, short enough to keep the tests quick
THRESHOLD = 3
ANN = User(1, "Ann", "ann@example.org", datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def make_cache(server: RedisServer, reset_after: float = 60.0) -> tuple[RedisUserCache, CircuitBreaker, list[str]]:
    """The cache as cache_from_config wires it (with THRESHOLD), its breaker, and the states it moved to."""
    moves: list[str] = []
    breaker = CircuitBreaker(
        "redis",
        threshold=THRESHOLD,
        reset_after=reset_after,
        is_failure=lambda exc: isinstance(exc, UNHEALTHY),
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


def test_cache_from_config_puts_redis_behind_a_breaker_that_only_silence_opens(server: RedisServer, database_url):
    moves: list[tuple[str, str]] = []
    config = make_config(database_url, REDIS_URL=server.url, BREAKER_THRESHOLD="2", CACHE_SOCKET_TIMEOUT="0.2")
    cache = cache_from_config(config, lambda name, _old, new: moves.append((name, new)))
    assert isinstance(cache, RedisUserCache) and cache.health_check is not None
    assert moves == [("redis", CLOSED)]  # the gauge exists before the first failure
    cache.put(ANN)
    assert cache.get(1) == ANN
    server.admin().config_set("maxmemory", "1")
    for _ in range(3):
        cache.put(ANN)  # -OOM: Redis answered, so the breaker does not count it
    assert moves == [("redis", CLOSED)]
    server.stop()
    for _ in range(2):
        assert cache.get(1) is None
    assert moves == [("redis", CLOSED), ("redis", OPEN)]
    assert isinstance(cache_from_config(make_config(database_url), lambda *_: None), NoCache)  # no REDIS_URL


@pytest.fixture
def database(database_url: str, db) -> Iterator[Database]:
    with Database(database_url, min_size=0, max_size=1, timeout=2) as database:
        yield database


def count_users(db) -> int:
    return db.execute("SELECT count(*) FROM users").fetchone()[0]


class WatchedCache:
    """The real cache, noting at each eviction how many users another session can see by then."""

    health_check: Check | None = None

    def __init__(self, cache: RedisUserCache, db: psycopg.Connection):
        self.cache = cache
        self.db = db
        self.users_seen_at_eviction: list[int] = []

    def get(self, user_id: int) -> User | None:
        return self.cache.get(user_id)

    def put(self, user: User) -> None:
        self.cache.put(user)

    def invalidate(self, user_id: int) -> None:
        self.users_seen_at_eviction.append(count_users(self.db))  # only committed rows are visible
        self.cache.invalidate(user_id)


def user_service(database: Database, cache: WatchedCache) -> UserService:
    """UserService as create_app wires it, on its own pool."""
    return UserService(UnitOfWork(database, deadline=lambda: Deadline(5)), cache)


def test_a_write_evicts_the_cached_user_only_once_it_has_committed(server, database, db):
    cache = WatchedCache(make_cache(server)[0], db)
    cache.put(ANN)  # a leftover entry for the id the new user gets (ids restart after a restore)
    user = user_service(database, cache).register("Ann", "ann@example.org")
    assert user.id == ANN.id
    assert cache.users_seen_at_eviction == [1]  # it ran after COMMIT, not before
    assert server.admin().exists("user:1") == 0


@pytest.fixture
def refused_at_commit(db) -> Iterator[None]:
    """Every insert into users passes its statement but fails COMMIT (a deferred constraint trigger)."""
    db.execute(
        "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$"
    )
    db.execute(
        "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON users DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION refuse_at_commit()"
    )
    try:
        yield
    finally:
        db.execute("DROP TRIGGER refuse_at_commit ON users")
        db.execute("DROP FUNCTION refuse_at_commit()")


def test_no_eviction_when_the_write_rolls_back(server, database, db):
    db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org')")
    cache = WatchedCache(make_cache(server)[0], db)
    cache.put(ANN)
    with pytest.raises(EmailTaken):
        user_service(database, cache).register("Imposter", "ANN@example.org")
    assert cache.users_seen_at_eviction == []
    assert server.admin().exists("user:1") == 1


def test_no_eviction_when_commit_fails(server, database, db, refused_at_commit):
    cache = WatchedCache(make_cache(server)[0], db)
    cache.put(ANN)
    with pytest.raises(CommitFailed):
        user_service(database, cache).register("Ann", "ann@example.org")
    assert cache.users_seen_at_eviction == []
    assert server.admin().exists("user:1") == 1
    assert count_users(db) == 0
