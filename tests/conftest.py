"""Shared fixtures: a fresh Postgres database per test run, cleaned before each test; real Redis.

TEST_DATABASE_URL names a server to create the run's database on; without it an embedded
Postgres (the `embedded` extra) is started in a temporary folder.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from flask import Flask

from webapp.postgres.migrations import migrate
from webapp.settings import Config, load_config

if TYPE_CHECKING:
    from bench.pgbouncer import PgBouncer

TABLES = "order_items, orders, idempotency_keys, products, users"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A Postgres server to create test databases on (admin connection URL)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    from webapp.gunicorn.devserver import start_embedded_postgres

    with tempfile.TemporaryDirectory(prefix="webapp-pg-") as tmp:
        server, url = start_embedded_postgres(__import__("pathlib").Path(tmp) / "data")
        yield url
        server.cleanup()  # type: ignore[attr-defined]


@contextmanager
def scratch_database(server_url: str, prefix: str, *, migrated: bool = True) -> Iterator[str]:
    """A database of its own on the server (migrated unless told otherwise), dropped at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(server_url, name)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A database of this run's own, migrated; dropped at the end."""
    with scratch_database(server_url, "webapp_test") as url:
        yield url


@pytest.fixture(scope="session")
def pgbouncer(database_url: str) -> Iterator[PgBouncer]:
    """PgBouncer 1.18 in transaction mode (3 shared server connections) in front of the run's server.

    Its pause()/resume() drive the admin console. Skips visibly without the binary, unless REQUIRE_PGBOUNCER=1.
    """
    from tests.pgbouncer_server import pgbouncer_for

    with pgbouncer_for(database_url) as bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def pgbouncer_url(pgbouncer: PgBouncer, database_url: str) -> str:
    """The run's test database, reached through PgBouncer (what DATABASE_URL is in a pooled deploy)."""
    from tests.pgbouncer_server import database_name

    return pgbouncer.url(database_name(database_url))


def close_app(app: Flask) -> None:
    """Release what create_app started: the pool's connections and the probe threads."""
    app.extensions["webapp"]["database"].close(timeout=1)
    app.extensions["webapp"]["health"].close()
    if app.extensions["webapp"].get("tracing") is not None:
        app.extensions["webapp"]["tracing"].shutdown(timeout=2)


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    """Apps a test builds itself (append them); each is closed at the end."""
    built: list[Flask] = []
    yield built
    for app in built:
        close_app(app)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the clean test database, for arranging and asserting."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
        yield conn


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A reachable Redis (db 15), or a visible skip; with REQUIRE_REDIS=1 a missing Redis fails."""
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.RedisError as exc:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(f"REQUIRE_REDIS=1 but Redis at {url} is unreachable: {exc}")
        pytest.skip(f"no Redis reachable at {url}: {exc}")
    return url


def wait_until_the_app_waits_on_a_lock(db: psycopg.Connection, timeout: float = 5.0) -> None:
    """Block until one of the app's sessions (application_name 'webapp') waits on a row or table lock."""
    deadline = time.monotonic() + timeout
    while not db.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = 'webapp' AND datname = current_database() "
        "AND wait_event_type = 'Lock'"
    ).fetchone():
        assert time.monotonic() < deadline, "the app never blocked on the rival's lock"
        time.sleep(0.01)


def make_config(database_url: str, **env: str) -> Config:
    """A Config for tests: the test database plus any overrides, as environment strings."""
    return load_config({"DATABASE_URL": database_url, "LOG_LEVEL": "info", **env})
