"""create_app builds everything explicitly: two apps in one process share nothing."""

from __future__ import annotations

import pytest

from tests.conftest import close_app, make_config, scratch_database
from webapp import create_app


@pytest.fixture
def second_database(server_url: str):
    with scratch_database(server_url, "webapp_second") as url:
        yield url


def test_two_apps_in_one_process_share_nothing(database_url, second_database, db):
    first, second = create_app(make_config(database_url)), create_app(make_config(second_database))
    try:
        a, b = first.test_client(), second.test_client()
        assert a.post("/users", json={"name": "Ann", "email": "ann@example.org"}).status_code == 201
        # Same email, other database: no conflict, because nothing (pool, cache, state) is shared.
        assert b.post("/users", json={"name": "Ann", "email": "ann@example.org"}).status_code == 201
        assert b.post("/users", json={"name": "Bob", "email": "bob@example.org"}).status_code == 201
        assert len(a.get("/users").get_json()["items"]) == 1
        assert len(b.get("/users").get_json()["items"]) == 2
        for key in ("database", "health", "metrics"):
            assert first.extensions["webapp"][key] is not second.extensions["webapp"][key]
        assert first.extensions["webapp"]["metrics"].registry is not second.extensions["webapp"]["metrics"].registry
        metrics_a = a.get("/metrics").get_data(as_text=True)
        assert 'http_requests_total{method="POST",path="/users",status="201"} 1.0' in metrics_a
    finally:
        for app in (first, second):
            close_app(app)


def test_a_dependency_passed_in_is_used_instead_of_building_one(database_url, db):
    from webapp.observability.metrics import Metrics

    metrics = Metrics()
    app = create_app(make_config(database_url), metrics=metrics)
    try:
        app.test_client().get("/livez")
        assert app.extensions["webapp"]["metrics"] is metrics
        assert 'path="/livez"' in metrics.render().decode()
    finally:
        close_app(app)


def test_a_misspelt_dependency_name_is_refused_not_ignored(database_url):
    with pytest.raises(TypeError, match="databse"):
        create_app(make_config(database_url), databse=object())  # type: ignore[call-arg]


def test_building_the_app_does_not_wait_for_an_unreachable_database():
    import time

    started = time.monotonic()
    app = create_app(make_config("postgresql://postgres@127.0.0.1:1/nowhere", DB_POOL_TIMEOUT="0.3"))
    try:
        assert time.monotonic() - started < 1.0
        assert app.test_client().get("/livez").status_code == 200
        assert app.test_client().get("/users/1").status_code == 503
    finally:
        close_app(app)
