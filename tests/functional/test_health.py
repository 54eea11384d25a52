"""/livez, /readyz and /healthz through the real app: what each checks, how fast, and what it reveals."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
from collections.abc import Iterator

import pytest
from flask import Flask

from tests.conftest import make_config
from webapp import create_app
from webapp.observability.logs import HANDLER_NAME, configure_logging

SECRET_PASSWORD = "pw-that-must-never-show-7f3a"


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening), reserved for the test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def build(database_url: str, **env: str) -> Flask:
    return create_app(make_config(database_url, **env))


def checkouts(app: Flask) -> int:
    return int(app.extensions["webapp"]["database"].pool.get_stats().get("requests_num", 0))


def test_livez_answers_ok_and_touches_nothing(client, app: Flask):
    before = checkouts(app)
    response = client.get("/livez")
    assert (response.status_code, response.json) == (200, {"status": "ok"})
    assert checkouts(app) == before


def test_livez_stays_200_when_the_database_is_unreachable(closed_port: int, apps: list[Flask]):
    app = build(f"postgresql://postgres@127.0.0.1:{closed_port}/nope")
    apps.append(app)
    started = time.monotonic()
    assert app.test_client().get("/livez").status_code == 200
    assert time.monotonic() - started < 0.2  # a database outage must not get the process restarted


def test_readyz_without_a_configured_cache_is_200_ok_with_the_cache_disabled(client):
    # What a newcomer's `make run` answers first: no Redis configured is no fault.
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "checks": {"database": "ok", "cache": "disabled"}}


def test_readyz_with_database_and_cache_up_is_200_ok(database_url: str, db, redis_url: str, apps: list[Flask]):
    app = build(database_url, REDIS_URL=redis_url)
    apps.append(app)
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "checks": {"database": "ok", "cache": "ok"}}


def test_readyz_with_the_cache_down_stays_200_degraded(database_url: str, db, closed_port: int, apps: list[Flask]):
    app = build(database_url, REDIS_URL=f"redis://127.0.0.1:{closed_port}/0")
    apps.append(app)
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    checks = {"database": "ok", "cache": "unavailable: ConnectionError"}
    assert response.json == {"status": "degraded", "checks": checks}


def test_readyz_with_the_database_unreachable_is_503_within_the_timeout_and_names_no_dsn(
    closed_port: int, apps: list[Flask]
):
    app = build(f"postgresql://postgres:{SECRET_PASSWORD}@127.0.0.1:{closed_port}/nope", HEALTH_TIMEOUT="0.5")
    apps.append(app)
    client = app.test_client()
    for path in ("/readyz", "/healthz"):
        started = time.monotonic()
        response = client.get(path)
        elapsed = time.monotonic() - started

        assert response.status_code == 503
        assert elapsed < 0.5 + 0.5, f"{path} took {elapsed:.2f}s"  # the timeout, not a hang
        text = response.get_data(as_text=True)
        for revealing in (SECRET_PASSWORD, str(closed_port), "127.0.0.1", "postgresql://", "nope"):
            assert revealing not in text
    readiness = json.loads(client.get("/readyz").data)
    assert readiness["status"] == "unavailable"
    assert readiness["checks"]["database"].startswith(("unavailable", "timeout"))
    assert json.loads(client.get("/healthz").data)["database"].startswith(("unavailable", "timeout"))


def test_readyz_after_sigterm_answers_503_shutting_down(app: Flask, client):
    app.extensions["webapp"]["health"].mark_stopping()  # what DrainingSyncWorker does on SIGTERM
    response = client.get("/readyz")
    assert (response.status_code, response.json["status"]) == (503, "shutting_down")
    assert client.get("/livez").status_code == 200


def test_probes_take_no_request_transaction_and_ignore_the_request_deadline(app: Flask, client):
    database = app.extensions["webapp"]["database"]
    database.pool.wait(timeout=5)  # its min_size connections are open (they connect in the background)
    before = checkouts(app)
    # A budget no request transaction could meet: the probe does not run under it.
    response = client.get("/readyz", headers={"X-Request-Timeout": "0.000001"})
    assert response.status_code == 200
    assert checkouts(app) == before + 1  # the ping's own connection, nothing for the request
    stats = database.stats()
    assert stats["available"] == stats["size"]  # and it was given back before the response


@pytest.mark.parametrize("level, logged", [("info", False), ("debug", True)])
def test_probes_are_logged_at_debug_only(database_url: str, db, apps: list[Flask], level: str, logged: bool):
    app = build(database_url, LOG_LEVEL=level)
    apps.append(app)
    stream = io.StringIO()
    configure_logging(level, stream)
    try:
        client = app.test_client()
        for path in ("/livez", "/readyz", "/healthz"):
            client.get(path)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        _remove_json_handler()
    probe_lines = [line for line in lines if line.get("message") == "request"]
    assert len(probe_lines) == (3 if logged else 0)
    assert all(line["level"] == "DEBUG" for line in probe_lines)


def _remove_json_handler() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
