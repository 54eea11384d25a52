"""POST /orders with an Idempotency-Key: one order per key, however often and however concurrently
the request is sent; the original response is replayed; a key reused for another body is refused;
keys are remembered for IDEMPOTENCY_RETENTION_HOURS (default 24), then forgotten."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask

from tests.conftest import close_app, make_config, wait_until_the_app_waits_on_a_lock
from webapp import create_app

KEY = "order-2026-0001"


def app_for_concurrent_requests(database_url: str) -> Flask:
    """The real app, its queue for connections long enough that 50 concurrent requests all get one."""
    return create_app(make_config(database_url, DB_POOL_MAX="10", DB_POOL_MAX_WAITING="100", DB_POOL_TIMEOUT="10"))


@pytest.fixture
def app(database_url: str, db) -> Iterator[Flask]:
    app = app_for_concurrent_requests(database_url)
    yield app
    close_app(app)


@pytest.fixture
def shop(db) -> dict[str, Any]:
    user = db.execute("INSERT INTO users (name, email) VALUES ('Ann', 'ann@example.org') RETURNING id").fetchone()[0]
    product = db.execute(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES ('P1', 'P1', 250, 100) RETURNING id"
    ).fetchone()[0]
    return {"product": product, "body": {"user_id": user, "items": [{"product_id": product, "quantity": 2}]}}


def place(app: Flask, body: Any, key: str | None = KEY) -> Any:
    return app.test_client().post("/orders", json=body, headers={"Idempotency-Key": key} if key else {})


def count_orders(db) -> int:
    return db.execute("SELECT count(*) FROM orders").fetchone()[0]


def stock(db, product_id: int) -> int:
    return db.execute("SELECT stock FROM products WHERE id = %s", (product_id,)).fetchone()[0]


def test_a_replay_with_the_same_key_and_body_returns_the_original_response_and_places_nothing(app, db, shop):
    first = place(app, shop["body"])
    again = place(app, shop["body"])
    assert first.status_code == again.status_code == 201
    assert again.json == first.json  # same order id, same everything
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert count_orders(db) == 1
    assert stock(db, shop["product"]) == 100 - 2


def test_the_body_is_compared_by_meaning_not_by_its_bytes(app, db, shop):
    first = place(app, shop["body"])
    reordered = json.dumps(dict(reversed(list(shop["body"].items()))), indent=4)
    again = app.test_client().post(
        "/orders", data=reordered, content_type="application/json", headers={"Idempotency-Key": KEY}
    )
    assert again.status_code == 201 and again.json["id"] == first.json["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"


def test_a_whole_number_written_as_a_float_is_the_same_request(app, db, shop):
    first = place(app, shop["body"])
    as_float = {**shop["body"], "items": [{"product_id": shop["product"], "quantity": 2.0}]}
    again = place(app, as_float)
    assert again.status_code == 201 and again.json["id"] == first.json["id"]
    assert count_orders(db) == 1


def test_the_same_key_with_a_different_body_is_422_and_changes_nothing(app, db, shop):
    place(app, shop["body"])
    other = {**shop["body"], "items": [{"product_id": shop["product"], "quantity": 3}]}
    response = place(app, other)
    assert response.status_code == 422
    assert response.json["error"]["code"] == "idempotency_key_reused"
    assert "Idempotency-Key" in response.json["error"]["fields"]
    assert count_orders(db) == 1
    assert stock(db, shop["product"]) == 98


def test_the_same_key_for_another_product_at_the_same_quantity_is_422_and_changes_nothing(app, db, shop):
    place(app, shop["body"])
    pear = db.execute(
        "INSERT INTO products (sku, name, price_cents, stock) VALUES ('P2', 'P2', 250, 100) RETURNING id"
    ).fetchone()[0]
    other = {**shop["body"], "items": [{"product_id": pear, "quantity": 2}]}  # same quantity, same price
    response = place(app, other)
    assert response.status_code == 422
    assert response.json["error"]["code"] == "idempotency_key_reused"
    assert count_orders(db) == 1
    assert stock(db, pear) == 100


@pytest.mark.parametrize("key", ["short", "has a space", "ключ-12345678", "x" * 256, ""])
def test_an_invalid_key_is_422_and_places_nothing(app, db, shop, key: str):
    response = app.test_client().post("/orders", json=shop["body"], headers={"Idempotency-Key": key})
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json["error"]["fields"]
    assert count_orders(db) == 0


def test_a_failed_request_does_not_use_up_its_key(app, db, shop):
    # Only a success is remembered: a 409 changed nothing, so sending it again must try again.
    db.execute("UPDATE products SET stock = 1 WHERE id = %s", (shop["product"],))
    assert place(app, shop["body"]).status_code == 409
    db.execute("UPDATE products SET stock = 10 WHERE id = %s", (shop["product"],))
    retried = place(app, shop["body"])
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers
    assert count_orders(db) == 1


def fire(app: Flask, body: Any, n: int) -> list[Any]:
    """Send n identical requests at the same instant, each from its own thread and client."""
    start = threading.Barrier(n)
    responses: list[Any] = []

    def send() -> None:
        client = app.test_client()
        start.wait()
        responses.append(client.post("/orders", json=body, headers={"Idempotency-Key": KEY}))

    threads = [threading.Thread(target=send) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return responses


def assert_exactly_one_order(responses: list[Any], db, shop) -> list[Any]:
    created = [r for r in responses if r.status_code == 201]
    in_flight = [r for r in responses if r.status_code == 409]
    assert len(created) + len(in_flight) == len(responses), {r.status_code for r in responses}
    assert all(r.json["error"]["code"] == "idempotency_key_in_flight" for r in in_flight)
    assert len({r.json["id"] for r in created}) == 1  # every 201 is the same order
    assert sum("Idempotent-Replayed" not in r.headers for r in created) == 1  # ...placed by exactly one
    assert count_orders(db) == 1
    assert stock(db, shop["product"]) == 98
    return in_flight


def test_fifty_concurrent_requests_with_one_key_place_exactly_one_order(app, db, shop):
    responses = fire(app, shop["body"], 50)
    assert len(responses) == 50
    assert_exactly_one_order(responses, db, shop)


def test_while_the_first_request_is_in_flight_the_others_get_409_then_replays(app, db, shop, database_url):
    # Hold the product's row lock, so whichever request claims the key first stays inside
    # its transaction: every other one must see the key as in flight, none may wait or order.
    with psycopg.connect(database_url) as rival:
        rival.execute("SELECT 1 FROM products WHERE id = %s FOR UPDATE", (shop["product"],))
        held: list[Any] = []
        first = threading.Thread(target=lambda: held.append(place(app, shop["body"])))
        first.start()
        wait_until_the_app_waits_on_a_lock(rival)  # the first request reached the locked product
        others = fire(app, shop["body"], 49)
        rival.rollback()
        first.join(timeout=10)
    assert len(assert_exactly_one_order(others + held, db, shop)) == 49
    assert held[0].status_code == 201
    replay = place(app, shop["body"])
    assert replay.json["id"] == held[0].json["id"] and replay.headers.get("Idempotent-Replayed") == "true"


def test_an_expired_key_is_forgotten_and_the_request_places_a_new_order(app, db, shop):
    first = place(app, shop["body"])
    db.execute("UPDATE idempotency_keys SET created_at = now() - interval '23 hours'")
    assert place(app, shop["body"]).json["id"] == first.json["id"]  # inside the 24 h retention
    db.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    second = place(app, shop["body"])
    assert second.status_code == 201 and "Idempotent-Replayed" not in second.headers
    assert second.json["id"] != first.json["id"]
    assert count_orders(db) == 2
    # The key now stands for the new order, with a fresh retention period.
    assert place(app, shop["body"]).json["id"] == second.json["id"]


def test_one_users_key_never_blocks_another_users_order(app: Flask, shop, db):
    other = db.execute("INSERT INTO users (name, email) VALUES ('Bob', 'bob@example.org') RETURNING id").fetchone()[0]
    first = place(app, shop["body"])
    second = place(app, {**shop["body"], "user_id": other})  # the same Idempotency-Key, another user
    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in second.headers
    assert second.json["user_id"] == other and second.json["id"] != first.json["id"]
    assert count_orders(db) == 2
