"""Fixtures for tests that go through the real create_app."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import close_app, make_config
from webapp import create_app


@pytest.fixture
def app(database_url: str, db) -> Iterator[Flask]:
    """The real app on the clean test database, no cache."""
    app = create_app(make_config(database_url))
    yield app
    close_app(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@contextmanager
def trigger(db: psycopg.Connection, table: str, body: str, *, at_commit: bool = False) -> Iterator[None]:
    """A trigger on `table` running `body` (plpgsql) for each inserted row; at_commit defers it to COMMIT."""
    db.execute(f"CREATE FUNCTION injected_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body}; RETURN NEW; END $$")  # noqa: E501
    kind = "CONSTRAINT TRIGGER" if at_commit else "TRIGGER"
    timing = "AFTER INSERT" if at_commit else "BEFORE INSERT"
    deferred = "DEFERRABLE INITIALLY DEFERRED" if at_commit else ""
    db.execute(f"CREATE {kind} injected {timing} ON {table} {deferred} FOR EACH ROW EXECUTE FUNCTION injected_fault()")
    try:
        yield
    finally:
        db.execute(f"DROP TRIGGER injected ON {table}")
        db.execute("DROP FUNCTION injected_fault()")


@pytest.fixture
def json_logs(app: Flask) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The JSON lines the app's log handler writes, as dicts (same formatter and filters, our buffer)."""
    root = logging.getLogger()
    app_handler = next(h for h in root.handlers if h.get_name() == "webapp-json")
    buffer = io.StringIO()
    capture = logging.StreamHandler(buffer)
    capture.setFormatter(app_handler.formatter)
    for log_filter in app_handler.filters:
        capture.addFilter(log_filter)
    root.addHandler(capture)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines()]
    root.removeHandler(capture)
