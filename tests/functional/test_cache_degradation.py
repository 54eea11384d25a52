"""GET /users/<id> through the real app with a real Redis of the test's own: read-through when Redis
is well; served from Postgres with no 5xx when it is killed, paused or flushed; the breaker opens,
stops the waiting, and closes again once Redis is back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from flask import Flask

from tests.conftest import close_app, make_config
from tests.redis_server import RedisServer
from webapp import create_app

SOCKET_TIMEOUT = 0.25  # what a request pays per Redis call while Redis hangs and the breaker is closed
THRESHOLD = 3


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def cached_app(database_url: str, server: RedisServer, reset_after: float) -> Flask:
    return create_app(
        make_config(
            database_url,
            REDIS_URL=server.url,
            CACHE_SOCKET_TIMEOUT=str(SOCKET_TIMEOUT),
            BREAKER_THRESHOLD=str(THRESHOLD),
            BREAKER_RESET_AFTER=str(reset_after),
        )
    )


@pytest.fixture
def app(database_url: str, db, redis_server: RedisServer) -> Iterator[Flask]:
    """The real app with the cache on the test's Redis; a short cool-off so recovery is quick to see."""
    app = cached_app(database_url, redis_server, reset_after=0.5)
    yield app
    close_app(app)


def breaker_gauge(app: Flask) -> float | None:
    """circuit_breaker_state{name="redis"} as /metrics exports it: 0 closed, 1 half-open, 2 open."""
    return app.extensions["webapp"]["metrics"].registry.get_sample_value("circuit_breaker_state", {"name": "redis"})


def checkouts(app: Flask) -> int:
    """How many times the app asked its pool for a connection so far."""
    return int(app.extensions["webapp"]["database"].pool.get_stats().get("requests_num", 0))


def create_users(client, n: int) -> list[int]:
    ids = []
    for i in range(n):
        response = client.post("/users", json={"name": f"User {i}", "email": f"user{i}@example.org"})
        assert response.status_code == 201
        ids.append(response.json["id"])
    return ids


def timed_get(client, path: str) -> tuple[int, float]:
    started = time.monotonic()
    status = client.get(path).status_code
    return status, time.monotonic() - started


class Load:
    """Requests GET /users/<id> in a loop on a thread of its own until stopped; records (status, seconds)."""

    def __init__(self, app: Flask, user_ids: list[int]) -> None:
        self.results: list[tuple[int, float]] = []
        self._client = app.test_client()
        self._ids = user_ids
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            self.results.append(timed_get(self._client, f"/users/{self._ids[i % len(self._ids)]}"))
            i += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_second_read_is_served_from_redis_without_touching_postgres(app: Flask, db, redis_server: RedisServer):
    client = app.test_client()
    (user_id,) = create_users(client, 1)
    assert client.get(f"/users/{user_id}").get_json()["name"] == "User 0"  # miss: read from Postgres, cached
    assert redis_server.admin().exists(f"user:{user_id}") == 1

    db.execute("UPDATE users SET name = 'Changed behind the app' WHERE id = %s", (user_id,))
    before = checkouts(app)
    with psycopg.connect(db.info.dsn) as locker:
        # Anything that reads the users table now waits; a cache hit cannot be slowed by it.
        locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        response = client.get(f"/users/{user_id}", headers={"X-Request-Timeout": "2"})
        locker.rollback()
    assert response.status_code == 200
    assert response.get_json()["name"] == "User 0"  # the cached copy, not the row
    assert checkouts(app) == before  # not a single pool checkout: Postgres was never asked


def test_a_flushed_cache_is_refilled_from_postgres(app: Flask, db, redis_server: RedisServer):
    client = app.test_client()
    (user_id,) = create_users(client, 1)
    client.get(f"/users/{user_id}")
    db.execute("UPDATE users SET name = 'Renamed' WHERE id = %s", (user_id,))
    redis_server.admin().flushall()
    response = client.get(f"/users/{user_id}")
    assert response.status_code == 200 and response.get_json()["name"] == "Renamed"
    assert redis_server.admin().exists(f"user:{user_id}") == 1
    assert breaker_gauge(app) == 0  # an empty cache is not a sick one


def test_creating_a_user_evicts_a_leftover_entry_for_its_id_after_commit(app: Flask, redis_server: RedisServer):
    # A leftover from before the ids were reset (say, a database restored from a backup).
    redis_server.admin().set(
        "user:1", '{"id": 1, "name": "Ghost", "email": "ghost@example.org", "created_at": "2020-01-01T00:00:00+00:00"}'
    )
    client = app.test_client()
    assert create_users(client, 1) == [1]
    assert redis_server.admin().exists("user:1") == 0
    assert client.get("/users/1").get_json()["name"] == "User 0"


def test_a_failed_create_evicts_nothing(app: Flask, redis_server: RedisServer):
    client = app.test_client()
    (user_id,) = create_users(client, 1)
    client.get(f"/users/{user_id}")
    duplicate = client.post("/users", json={"name": "Again", "email": "USER0@example.org"})
    assert duplicate.status_code == 409
    assert redis_server.admin().exists(f"user:{user_id}") == 1


def test_a_killed_redis_costs_no_errors_opens_the_breaker_and_it_closes_once_redis_is_back(
    app: Flask, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="webapp.resilience")
    user_ids = create_users(app.test_client(), 5)
    assert breaker_gauge(app) == 0
    with Load(app, user_ids) as load:
        wait_for(lambda: len(load.results) >= 20)
        redis_server.stop()
        wait_for(lambda: breaker_gauge(app) == 2)
        during_outage = len(load.results)
        wait_for(lambda: len(load.results) >= during_outage + 50)  # served from Postgres meanwhile
        redis_server.start()  # same port, empty
        wait_for(lambda: breaker_gauge(app) == 0)  # after reset_after, one trial call closes it
        recovered = len(load.results)
        wait_for(lambda: len(load.results) >= recovered + 20)
    statuses = {status for status, _ in load.results}
    assert statuses == {200}, statuses
    assert max(seconds for _, seconds in load.results) < 1.0  # no request hung on the dead Redis
    messages = [r.getMessage() for r in caplog.records if r.name == "webapp.resilience"]
    assert sum("opened" in m for m in messages) == 1, messages
    assert sum("closed" in m for m in messages) == 1, messages
    assert redis_server.admin().dbsize() > 0  # the cache is being filled again


def test_a_hanging_redis_adds_bounded_latency_and_none_once_the_breaker_is_open(
    database_url: str, db, redis_server: RedisServer
):
    app = cached_app(database_url, redis_server, reset_after=30)  # stays open for the whole test
    try:
        client = app.test_client()
        user_ids = create_users(client, 3)
        for user_id in user_ids:
            client.get(f"/users/{user_id}")  # cached
        # Redis keeps accepting connections but answers nothing: the worst case, a slow Redis.
        redis_server.admin().client_pause(1500, all=True)
        results = [timed_get(client, f"/users/{user_ids[i % 3]}") for i in range(40)]
        assert breaker_gauge(app) == 2
    finally:
        close_app(app)
    assert {status for status, _ in results} == {200}
    # Until the breaker opens a request waits at most a socket timeout per Redis call (get + put).
    assert all(seconds < 2 * SOCKET_TIMEOUT + 0.25 for _, seconds in results), results
    waited = [i for i, (_, seconds) in enumerate(results) if seconds >= SOCKET_TIMEOUT]
    # THRESHOLD failed calls open it: the first two requests (get+put, then get). After that no
    # request waits on Redis at all - any that did would have taken a full socket timeout.
    assert waited == [0, 1], results
