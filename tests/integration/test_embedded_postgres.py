"""The embedded Postgres that `make run` uses without DATABASE_URL really starts, migrates and serves."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.conftest import close_app, make_config
from webapp import create_app
from webapp.gunicorn.devserver import start_embedded_postgres
from webapp.postgres.migrations import migrate
from webapp.settings import load_config


@pytest.mark.slow
def test_embedded_postgres_starts_migrates_and_serves_the_app(tmp_path: Path):
    server, url = start_embedded_postgres(tmp_path / "data")
    try:
        assert load_config({"DATABASE_URL": url}).database_url == url  # the unix-socket URL form is accepted
        assert migrate(url)
        app = create_app(make_config(url))
        try:
            client = app.test_client()
            created = client.post("/users", json={"name": "Ann", "email": "ann@example.org"})
            assert created.status_code == 201 and created.json is not None
            fetched = client.get(f"/users/{created.json['id']}")
            assert fetched.json is not None and fetched.json["email"] == "ann@example.org"
        finally:
            close_app(app)
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 150000
    finally:
        server.cleanup()  # type: ignore[attr-defined]
