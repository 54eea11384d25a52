"""One lazily-begun transaction per request: committed before the response, rolled back on errors."""

from __future__ import annotations

import pytest
from flask import Flask

from webapp.errors import NotFound


def app_connections(db) -> list[str]:
    rows = db.execute(
        "SELECT state FROM pg_stat_activity WHERE application_name = 'webapp' AND datname = current_database()"
    ).fetchall()
    return [row[0] for row in rows]


def connection_of(app: Flask):
    """The function repositories call to get the request's connection (as create_app wires it)."""
    return app.extensions["webapp"]["transaction"].connection


def test_a_failed_commit_is_a_500_and_nothing_is_persisted(app: Flask, client, db):
    db.execute("CREATE TABLE IF NOT EXISTS late_check (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
    db.execute("TRUNCATE late_check")
    connection = connection_of(app)

    @app.post("/test-only/late-failure")
    def late_failure():
        connection().execute("INSERT INTO late_check VALUES (1), (1)")  # fails only at COMMIT
        return {"created": True}, 201

    try:
        response = client.post("/test-only/late-failure", json={})
        assert response.status_code == 500
        assert response.json["error"]["code"] == "internal_error"
        assert db.execute("SELECT count(*) FROM late_check").fetchone() == (0,)
    finally:
        db.execute("DROP TABLE late_check")


def test_an_exception_in_a_view_rolls_back_what_it_wrote(app: Flask, client, db):
    connection = connection_of(app)

    @app.post("/test-only/write-then-fail")
    def write_then_fail():
        connection().execute("INSERT INTO users (name, email) VALUES ('Ghost', 'ghost@example.org')")
        raise RuntimeError("after the write")

    assert client.post("/test-only/write-then-fail", json={}).status_code == 500
    assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_an_error_response_rolls_back_what_the_view_wrote(app: Flask, client, db):
    connection = connection_of(app)

    @app.post("/test-only/write-then-404")
    def write_then_404():
        connection().execute("INSERT INTO users (name, email) VALUES ('Ghost', 'ghost@example.org')")
        raise NotFound("nothing here")

    assert client.post("/test-only/write-then-404", json={}).status_code == 404
    assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_the_request_deadline_is_the_transactions_statement_timeout(app: Flask, client):
    connection = connection_of(app)

    @app.get("/test-only/timeout")
    def timeout():
        row = connection().execute("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'").fetchone()
        return {"statement_timeout": row[0] if row else None}

    default = client.get("/test-only/timeout").json["statement_timeout"]
    shorter = client.get("/test-only/timeout", headers={"X-Request-Timeout": "0.5"}).json["statement_timeout"]
    # The full budget is the connection's own default (10 s); a shorter one is set for the transaction.
    assert 9900 <= int(default) <= 10000
    assert 0 < int(shorter) <= 500


def test_connections_always_return_to_the_pool_idle(client, db):
    client.post("/users", json={"name": "Ann", "email": "ann@example.org"})
    client.post("/users", json={"name": "Ann", "email": "ann@example.org"})  # 409
    client.get("/users/999")  # 404
    client.post("/orders", json={"user_id": 1, "items": [{"product_id": 9, "quantity": 1}]})  # 422
    states = app_connections(db)
    assert states, "the app should have pooled connections"
    assert all(state == "idle" for state in states), states


def test_health_and_unknown_routes_take_no_connection(app: Flask, client):
    pool = app.extensions["webapp"]["database"].pool
    before = pool.get_stats().get("requests_num", 0)
    for path in ("/livez", "/nope", "/openapi.json"):
        client.get(path)
    assert pool.get_stats().get("requests_num", 0) == before


@pytest.mark.parametrize(
    ("method", "statement"),
    [
        ("POST", "INSERT INTO users (name, email) VALUES ('Ghost', 'ghost@example.org')"),  # COMMIT via psycopg
        ("GET", "SELECT count(*) FROM users"),  # READ ONLY: COMMIT via PQexec
    ],
)
def test_a_connection_lost_at_commit_is_a_503_with_retry_after_never_a_2xx(
    app: Flask, client, db, method: str, statement: str
):
    connection = connection_of(app)

    def lose_connection():
        conn = connection()
        conn.execute(statement)
        # As a Postgres restart would: the session dies between the view and its COMMIT.
        db.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        return {"done": True}, 201 if method == "POST" else 200

    app.add_url_rule("/test-only/lose-connection-at-commit", view_func=lose_connection, methods=[method])
    response = client.open("/test-only/lose-connection-at-commit", method=method, json={} if method == "POST" else None)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json["error"]["code"] == "service_unavailable"
    assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_a_get_runs_read_only_so_postgres_itself_refuses_a_write_from_it(app: Flask, client, db):
    connection = connection_of(app)

    @app.get("/test-only/mode")
    def mode():
        row = connection().execute("SELECT current_setting('transaction_read_only')").fetchone()
        return {"read_only": row[0] if row else None}

    @app.get("/test-only/careless-write")
    def careless_write():
        connection().execute("INSERT INTO users (name, email) VALUES ('Ghost', 'ghost@example.org')")
        return {"created": True}

    assert client.get("/test-only/mode").json == {"read_only": "on"}
    response = client.get("/test-only/careless-write")
    assert response.status_code == 500  # our bug, not the client's: logged with its request id
    assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)
    assert all(state == "idle" for state in app_connections(db))


def test_a_post_runs_read_write(app: Flask, client):
    connection = connection_of(app)

    @app.post("/test-only/mode")
    def mode():
        row = connection().execute("SELECT current_setting('transaction_read_only')").fetchone()
        return {"read_only": row[0] if row else None}

    assert client.post("/test-only/mode", json={}).json == {"read_only": "off"}
