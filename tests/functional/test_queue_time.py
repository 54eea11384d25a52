"""Queue time is on the request's clock: with the proxy's X-Request-Start the deadline runs from when the proxy
received the request, a request whose budget ran out while it queued is a 503 before any work, and the time
queued is logged and measured. REQUEST_TIMEOUT is 10 s (the default) here."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from flask import Flask

from tests.functional.conftest import trigger

REQUEST_TIMEOUT = 10.0
MARGIN = 0.35  # scheduling on a busy 2-core machine
STAMP_RESOLUTION = 0.001  # the stamps are in milliseconds: rounding either way


def nginx_stamp(seconds_ago: float) -> str:
    """X-Request-Start as deploy/nginx.conf sends it: t=${msec}."""
    return f"t={time.time() - seconds_ago:.3f}"


def heroku_stamp(seconds_ago: float) -> str:
    """X-Request-Start as Heroku's router sends it: milliseconds since the epoch."""
    return str(int((time.time() - seconds_ago) * 1000))


@pytest.fixture
def user_id(db) -> int:
    return db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org') RETURNING id").fetchone()[0]


@pytest.fixture
def request_lines(json_logs: Callable[[], list[dict[str, Any]]]) -> Callable[[], list[dict[str, Any]]]:
    """The request lines the app logs, as dicts."""
    return lambda: [line for line in json_logs() if line["message"] == "request"]


def statement_timeout_seen(app: Flask, db: psycopg.Connection, headers: dict[str, str]) -> float:
    """The statement_timeout (seconds) a POST /users transaction ran under, read by a trigger inside it."""
    db.execute("CREATE TABLE seen_timeouts (setting text)")
    try:
        with trigger(db, "users", "INSERT INTO seen_timeouts VALUES (current_setting('statement_timeout'))"):
            body = {"name": "Q", "email": f"{uuid.uuid4().hex}@example.org"}
            response = app.test_client().post("/users", json=body, headers=headers)
        row = db.execute("SELECT setting FROM seen_timeouts").fetchone()
    finally:
        db.execute("DROP TABLE seen_timeouts")
    assert response.status_code == 201, response.json
    assert row is not None
    return int(row[0].removesuffix("ms")) / 1000


@pytest.mark.parametrize("stamp", [nginx_stamp, heroku_stamp], ids=["nginx", "heroku"])
def test_time_queued_before_the_worker_is_taken_from_the_budget(app: Flask, db, stamp: Callable[[float], str]):
    budget = statement_timeout_seen(app, db, {"X-Request-Start": stamp(6.0)})
    assert REQUEST_TIMEOUT - 6.0 - MARGIN < budget <= REQUEST_TIMEOUT - 6.0 + STAMP_RESOLUTION


def test_a_stamp_from_the_future_cannot_lengthen_the_budget(app: Flask, db):
    assert REQUEST_TIMEOUT - MARGIN < statement_timeout_seen(app, db, {"X-Request-Start": nginx_stamp(-60)}) \
        <= REQUEST_TIMEOUT
    # Nor the client's own shorter budget: queue time comes off whichever budget applies.
    shorter = statement_timeout_seen(app, db, {"X-Request-Start": nginx_stamp(1.0), "X-Request-Timeout": "3"})
    assert 2.0 - MARGIN < shorter <= 2.0 + STAMP_RESOLUTION


def test_an_absurd_stamp_leaves_the_whole_budget(app: Flask, db):
    for header in ("t=garbage", "t=-5", nginx_stamp(2 * 86400)):
        assert REQUEST_TIMEOUT - MARGIN < statement_timeout_seen(app, db, {"X-Request-Start": header}) \
            <= REQUEST_TIMEOUT


@pytest.mark.parametrize("stamp", [nginx_stamp, heroku_stamp], ids=["nginx", "heroku"])
def test_a_request_whose_budget_ran_out_in_the_queue_is_a_503_at_once_without_touching_the_database(
    app: Flask, db, user_id: int, database_url: str, request_lines, stamp: Callable[[float], str],
):
    with psycopg.connect(database_url) as locker:
        # Any query of users would wait for this lock: an answer in milliseconds never ran one.
        locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        response = app.test_client().get(f"/users/{user_id}", headers={
            "X-Request-Start": stamp(REQUEST_TIMEOUT + 1.5), "X-Request-ID": "queued-out-1",
        })
        seconds = time.monotonic() - started
        locker.rollback()

    assert response.status_code == 503 and seconds < MARGIN
    assert response.headers["Retry-After"] == "1"
    error = (response.json or {})["error"]
    assert (error["code"], error["request_id"]) == ("queued_too_long", "queued-out-1")
    assert app.extensions["webapp"]["database"].pool.get_stats().get("requests_num", 0) == 0  # never asked the pool
    [line] = request_lines()
    assert (line["status"], line["level"], line["path"]) == (503, "WARNING", "/users/<id:user_id>")
    assert REQUEST_TIMEOUT + 1.5 - STAMP_RESOLUTION <= line["queue_ms"] / 1000 < REQUEST_TIMEOUT + 1.5 + MARGIN


def test_the_budget_ran_out_in_the_queue_and_the_database_is_a_504_at_the_remaining_time(
    app: Flask, user_id: int, database_url: str,
):
    with psycopg.connect(database_url) as locker:
        locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        response = app.test_client().get(f"/users/{user_id}", headers={"X-Request-Start": nginx_stamp(9.5)})
        seconds = time.monotonic() - started
        locker.rollback()
    assert response.status_code == 504, response.json
    assert 0.5 - 0.1 < seconds < 0.5 + MARGIN  # 10 s from when the proxy received it, not from now


def test_probes_are_answered_however_long_they_queued(app: Flask, db):
    for path in ("/livez", "/readyz"):
        response = app.test_client().get(path, headers={"X-Request-Start": nginx_stamp(REQUEST_TIMEOUT + 5)})
        assert response.status_code == 200, (path, response.json)


def test_queue_time_is_logged_and_measured_only_when_a_proxy_sent_it(app: Flask, user_id: int, request_lines):
    metrics = app.extensions["webapp"]["metrics"]
    client = app.test_client()
    assert client.get(f"/users/{user_id}").status_code == 200
    assert client.get(f"/users/{user_id}", headers={"X-Request-Start": nginx_stamp(0.3)}).status_code == 200
    assert client.get(f"/users/{user_id}", headers={"X-Request-Start": heroku_stamp(0.02)}).status_code == 200

    without, *with_header = request_lines()
    assert "queue_ms" not in without
    assert 300 - 1 <= with_header[0]["queue_ms"] < 300 + MARGIN * 1000
    assert 20 - 1 <= with_header[1]["queue_ms"] < 20 + MARGIN * 1000
    text = metrics.render().decode()
    assert "http_request_queue_seconds_count 2.0" in text
    assert 'http_request_queue_seconds_bucket{le="0.25"} 1.0' in text  # the 20 ms one; the 300 ms one is above
