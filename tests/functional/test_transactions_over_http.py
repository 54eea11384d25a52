"""Each request's writes commit together before the answer leaves, or not at all; faults are injected
in the real Postgres (triggers), so the real app, services and transactions are what is tested."""

from __future__ import annotations

from flask import Flask

from tests.functional.conftest import trigger


def user_and_product(client, stock: int = 5) -> tuple[int, int]:
    user = client.post("/users", json={"name": "Ann", "email": "ann@example.org"}).json["id"]
    product = client.post("/products", json={"sku": "SKU-1", "name": "Lamp", "price_cents": 100, "stock": stock})
    return user, product.json["id"]


def test_an_order_that_fails_after_its_stock_was_decremented_changes_nothing(client, db):
    user_id, product_id = user_and_product(client, stock=5)
    # The stock UPDATE has run by the time the order's items are inserted; then this step fails.
    with trigger(db, "order_items", "RAISE EXCEPTION 'injected failure after the stock decrement'"):
        order = {"user_id": user_id, "items": [{"product_id": product_id, "quantity": 2}]}
        response = client.post("/orders", json=order)
    assert response.status_code == 500
    assert response.json["error"]["code"] == "internal_error"
    assert db.execute("SELECT stock FROM products WHERE id = %s", (product_id,)).fetchone() == (5,)
    assert db.execute("SELECT count(*) FROM orders").fetchone() == (0,)


def test_a_commit_the_server_rejects_is_a_500_and_nothing_is_persisted(client, db):
    with trigger(db, "users", "RAISE EXCEPTION 'rejected at COMMIT'", at_commit=True):
        response = client.post("/users", json={"name": "Ann", "email": "ann@example.org"})
    assert response.status_code == 500
    assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_a_connection_lost_at_commit_is_a_503_with_retry_after_never_a_2xx(client, db):
    # As a Postgres restart would: the session dies while COMMIT runs.
    with trigger(db, "users", "PERFORM pg_terminate_backend(pg_backend_pid())", at_commit=True):
        response = client.post("/users", json={"name": "Ann", "email": "ann@example.org"})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json["error"]["code"] == "service_unavailable"
    assert db.execute("SELECT count(*) FROM users").fetchone() == (0,)


def test_the_request_deadline_travels_with_each_transaction_as_its_statement_timeout(client, db):
    db.execute("CREATE TABLE seen_timeouts (setting text)")
    try:
        with trigger(db, "users", "INSERT INTO seen_timeouts VALUES (current_setting('statement_timeout'))"):
            client.post("/users", json={"name": "Ann", "email": "ann@example.org"})
            bob = {"name": "Bob", "email": "bob@example.org"}
            client.post("/users", json=bob, headers={"X-Request-Timeout": "0.5"})
        default, shorter = (int(row[0].removesuffix("ms")) for row in db.execute("SELECT setting FROM seen_timeouts"))
    finally:
        db.execute("DROP TABLE seen_timeouts")
    assert 9000 < default <= 10000  # REQUEST_TIMEOUT's 10 s, less the time already spent
    assert 0 < shorter <= 500


def test_connections_always_return_to_the_pool_idle(client, db):
    client.post("/users", json={"name": "Ann", "email": "ann@example.org"})
    client.post("/users", json={"name": "Ann", "email": "ann@example.org"})  # 409
    client.get("/users/999")  # 404
    client.post("/orders", json={"user_id": 1, "items": [{"product_id": 9, "quantity": 1}]})  # 422
    states = [row[0] for row in db.execute(
        "SELECT state FROM pg_stat_activity WHERE application_name = 'webapp' AND datname = current_database()"
    )]
    assert states, "the app should have pooled connections"
    assert all(state == "idle" for state in states), states


def test_health_metrics_and_unknown_routes_take_no_connection(app: Flask, client):
    pool = app.extensions["webapp"]["database"].pool
    before = pool.get_stats().get("requests_num", 0)
    for path in ("/livez", "/nope", "/openapi.json", "/metrics"):
        client.get(path)
    assert pool.get_stats().get("requests_num", 0) == before
