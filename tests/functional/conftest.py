"""Fixtures for tests that go through the real create_app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import close_app, make_config
from webapp import create_app


@pytest.fixture
def app(database_url: str, db) -> Iterator[Flask]:  # type: ignore[no-untyped-def]
    """The real app on the clean test database, no cache."""
    app = create_app(make_config(database_url))
    yield app
    close_app(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
